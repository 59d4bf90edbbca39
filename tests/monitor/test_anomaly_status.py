"""`lookout status` shows each anomaly rule's value, band, z and baseline, or that it is still
learning."""

from __future__ import annotations

from rich.console import Console

from lookout.monitor.cli.status import anomaly_table


def test_the_status_table_shows_band_and_z_or_learning() -> None:
    rows = [
        {
            "rule": "slow",
            "labels": {"app": "bot", "model": "*"},
            "value": 4.1,
            "baseline": "daily",
            "low": 1.2,
            "high": 1.8,
            "z": 6.3,
            "anomalous": True,
            "history_points": 5760,
        },
        {
            "rule": "slow",
            "labels": {"app": "new", "model": "*"},
            "value": 2.0,
            "baseline": "learning",
            "low": None,
            "high": None,
            "z": None,
            "anomalous": False,
            "history_points": 12,
        },
    ]
    console = Console(width=120, record=True)
    console.print(anomaly_table(rows))
    text = console.export_text()
    assert "1.2-1.8" in text and "+6.3" in text and "daily" in text
    assert "learning (12 min)" in text
