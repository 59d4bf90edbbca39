"""`lookout replay FILE.jsonl` runs the ingest pipeline over a file and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lookout.monitor.config import load_settings
from lookout.monitor.ingest.replay import run_replay
from lookout.monitor.metrics.windows import ALL

T0 = 1_700_000_000


def write_stream(path: Path) -> None:
    lines = [
        json.dumps(
            {
                "id": f"r{i}",
                "ts": T0 + i,
                "app": "bot",
                "model": "gpt-4o-mini",
                "latency_ms": 100 * (i % 10 + 1),
                "output_tokens": 10,
                "error": "timeout" if i % 20 == 0 else None,
            }
        )
        for i in range(120)
    ]
    lines.insert(5, "{broken")
    lines.insert(9, json.dumps([{"id": "r0", "app": "bot", "ts": T0}, {"latency_ms": -2}]))
    path.write_text("\n".join(lines) + "\n\n")


async def test_replay_report_counts_and_series_follow_record_time(tmp_path: Path) -> None:
    f = tmp_path / "calls.jsonl"
    write_stream(f)
    report = await run_replay(load_settings(None), f)
    assert report.lines == 122
    assert report.accepted == 120
    assert report.duplicates == 1
    assert dict(report.rejected) == {"invalid_json": 1, "negative_value": 1}
    overall = next(s for s in report.series if (s.app, s.model) == (ALL, ALL))
    assert overall.count == 120
    assert overall.errors == 6
    # 120 records over two minutes of record time: the rate follows ts, not wall time.
    assert 0.9 <= overall.qps <= 1.1
    assert overall.latency_p50 is not None and 0.5 <= overall.latency_p50 <= 0.6


def test_replay_command_prints_a_summary(tmp_path: Path) -> None:
    f = tmp_path / "calls.jsonl"
    write_stream(f)
    out = subprocess.run(
        [sys.executable, "-m", "lookout", "replay", str(f)],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin"},
    )
    assert "records accepted   │ 120" in out.stdout
    assert "invalid_json" in out.stdout
    assert "gpt-4o-mini" in out.stdout
