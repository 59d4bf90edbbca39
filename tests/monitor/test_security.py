"""Hostile and careless input to a running daemon over real HTTP (issue 12): a browser page
turned against the API (cross-site writes, DNS rebinding, framing), silences that never end,
query parameters out of range, bodies of any size, and what the status and files reveal."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.conftest import Receiver, running, sample_value, status_of
from tests.monitor.test_detection import detecting, prompts, send
from tests.monitor.test_secrets import lookout

JSON = {"Content-Type": "application/json"}


def with_rules(settings_for: Callable[..., Settings], url: str, **extra: Any) -> Settings:
    """Settings with one rule, so the silences' outbox exists."""
    return settings_for(
        channels={"hook": {"kind": "webhook", "url": url}},
        rules=[{"name": "slow", "metric": "latency_p95", "threshold": 1, "channels": ["hook"]}],
        **extra,
    )


def http(d: Daemon, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}", headers=headers)  # type: ignore[union-attr]


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: `Infinity` and `NaN` are errors."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
async def daemon_with_rules(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> AsyncIterator[Daemon]:
    async with running(Daemon(with_rules(settings_for, receiver.url))) as d:
        yield d


# --- 2. cross-site requests and DNS rebinding ---------------------------------------------------


async def test_a_cross_site_text_plain_post_mutes_nothing_and_ingests_nothing(
    daemon_with_rules: Daemon,
) -> None:
    """A page's `fetch()` may send a `text/plain` POST without a preflight: refused."""
    d = daemon_with_rules
    async with http(d) as client:
        silence = json.dumps({"rule": "slow", "duration": "1h"})
        plain = {"Content-Type": "text/plain"}
        muted = await client.post("/api/v1/silences", content=silence, headers=plain)
        assert muted.status_code == 415 and "application/json" in muted.json()["error"]
        record = json.dumps({"app": "bot", "latency_ms": 5})
        posted = await client.post("/api/v1/records", content=record, headers=plain)
        assert posted.status_code == 415
        assert (await client.get("/api/v1/silences")).json() == []
        assert (
            sample_value(
                d, "lookout_records_total", {"app": "bot", "model": "unknown", "status": "ok"}
            )
            == 0
        )
        # The same with the right type, from no page at all, works.
        assert (await client.post("/api/v1/silences", content=silence, headers=JSON)).is_success


async def test_a_foreign_origin_cannot_write_but_the_dashboards_own_can(
    daemon_with_rules: Daemon,
) -> None:
    d = daemon_with_rules
    own = f"http://127.0.0.1:{d.api.port}"  # type: ignore[union-attr]
    body = json.dumps({"rule": "slow", "duration": "1h"})
    async with http(d, **JSON) as client:
        for origin in ("https://evil.example", "null", f"http://127.0.0.1:{d.api.port + 1}"):  # type: ignore[union-attr, operator]
            refused = await client.post(
                "/api/v1/silences", content=body, headers={"Origin": origin}
            )
            assert refused.status_code == 403, origin
            assert "cross-origin" in refused.json()["error"]
        made = await client.post("/api/v1/silences", content=body, headers={"Origin": own})
        assert made.status_code == 201
        silence_id = made.json()["id"]
        gone = await client.delete(
            f"/api/v1/silences/{silence_id}", headers={"Origin": "https://evil.example"}
        )
        assert gone.status_code == 403
        assert (await client.delete(f"/api/v1/silences/{silence_id}")).status_code == 200


async def test_a_rebound_host_name_reads_nothing(settings_for: Callable[..., Settings]) -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1, the browser sends its name."""
    settings = settings_for(api={"bind": "127.0.0.1:0", "allowed_hosts": ["Lookout.Example.com"]})
    async with running(Daemon(settings)) as d, http(d) as client:
        port = d.api.port  # type: ignore[union-attr]
        for path in ("/api/v1/status", "/api/v1/rejected", "/metrics", "/"):
            answer = await client.get(path, headers={"Host": f"evil.example:{port}"})
            assert answer.status_code == 403, path
            assert "api.allowed_hosts" in answer.json()["error"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "lookout.example.com"):
            assert (await client.get("/api/v1/status", headers={"Host": host})).status_code == 200
        # Probes answer whatever name a load balancer uses.
        assert (await client.get("/healthz", headers={"Host": "evil.example"})).status_code == 200


async def test_every_answer_carries_the_security_headers(
    settings_for: Callable[..., Settings],
) -> None:
    async with running(Daemon(settings_for())) as d, http(d) as client:
        for path in ("/", "/assets/app.js", "/api/v1/status", "/no/such/path"):
            answer = await client.get(path)
            csp = answer.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["X-Frame-Options"] == "DENY"
        missing = await client.get("/no/such/path")
        assert missing.status_code == 404 and missing.json()["error"]


async def test_the_dashboard_cookie_is_secure_over_https_only(
    settings_for: Callable[..., Settings],
) -> None:
    token = "a-token-of-24-characters"
    settings = settings_for(api={"bind": "127.0.0.1:0", "token": token})
    async with running(Daemon(settings)) as d, http(d) as client:
        plain = await client.get(f"/?token={token}")
        assert "secure" not in plain.headers["set-cookie"].lower()
        proxied = await client.get(f"/?token={token}", headers={"X-Forwarded-Proto": "https"})
        assert "; secure" in proxied.headers["set-cookie"].lower()
        forwarded = await client.get(f"/?token={token}", headers={"Forwarded": "proto=https"})
        assert "; secure" in forwarded.headers["set-cookie"].lower()


# --- 3. silences --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"rule": "slow", "ends_at": "inf"}',
        b'{"rule": "slow", "ends_at": "nan"}',
        b'{"rule": "slow", "ends_at": NaN}',
        b'{"rule": "slow", "ends_at": Infinity}',
        b'{"rule": "slow", "ends_at": 1e308}',
        b'{"rule": "slow", "ends_at": 1e400}',
        b'{"rule": "slow", "ends_at": true}',
        b'{"rule": "slow", "duration": "400d"}',
        b'{"rule": "slow", "duration": 1e400}',
        b'{"rule": "slow", "duration": "91d"}',
    ],
)
async def test_a_silence_without_a_finite_bounded_end_is_refused(
    daemon_with_rules: Daemon, body: bytes
) -> None:
    async with http(daemon_with_rules, **JSON) as client:
        answer = await client.post("/api/v1/silences", content=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]
        listed = await client.get("/api/v1/silences")
        assert strict_json(listed.text) == []


async def test_the_silence_bound_is_configurable(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = with_rules(settings_for, receiver.url, silences={"max_duration": "2h"})
    async with running(Daemon(settings)) as d, http(d, **JSON) as client:
        too_long = await client.post("/api/v1/silences", json={"rule": "slow", "duration": "3h"})
        assert too_long.status_code == 400 and "at most" in too_long.json()["error"]
        ok = await client.post("/api/v1/silences", json={"rule": "slow", "duration": "2h"})
        assert ok.status_code == 201
        ends_at = d.clock.now() + 3600
        at = await client.post("/api/v1/silences", json={"rule": "slow", "ends_at": ends_at})
        assert at.status_code == 201


def test_silence_cli_refuses_an_endless_silence_and_lists_an_old_one(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"store: {{url: 'sqlite:///{tmp_path}/lookout.db'}}\n")
    refused = lookout("silence", "add", "--rule", "slow", "--for", "400d", "-c", str(config))
    assert refused.returncode == 2 and "at most 90 days" in refused.stderr
    added = lookout("silence", "add", "--rule", "slow", "--for", "2h", "-c", str(config))
    assert added.returncode == 0, added.stderr
    # An infinite silence an earlier version let in.
    with sqlite3.connect(tmp_path / "lookout.db") as db:
        db.execute(
            "INSERT INTO silences VALUES ('old', 'slow', '{}', 0, ?, 'forever')", (float("inf"),)
        )
    listed = lookout("silence", "list", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr and "never" in listed.stdout


async def test_an_endless_silence_from_an_earlier_version_lists_as_json(
    daemon_with_rules: Daemon,
) -> None:
    outbox = daemon_with_rules.outbox
    assert outbox is not None
    from lookout.alerts.outbox import Silence

    await outbox.add_silence(Silence("old", "slow", {}, 0.0, float("inf")))
    async with http(daemon_with_rules) as client:
        [listed] = strict_json((await client.get("/api/v1/silences")).text)
    assert listed["id"] == "old" and listed["ends_at"] is None


# --- 10. query parameters -----------------------------------------------------------------------


async def test_query_parameters_out_of_range_are_refused(
    settings_for: Callable[..., Settings],
) -> None:
    async with running(Daemon(settings_for())) as d, http(d) as client:
        for path in ("/api/v1/rejected", "/api/v1/ood", "/api/v1/judge/failures"):
            for limit in ("-1", "0", "abc", "1e3", "99999999999999999999", ""):
                answer = await client.get(path, params={"limit": limit})
                assert answer.status_code == 400, (path, limit)
                assert "limit must be an integer from 1 to" in answer.json()["error"]
            assert (await client.get(path, params={"limit": "5"})).status_code == 200
        assert (await client.get("/api/v1/rejected?limit=1000")).status_code == 200
        assert (await client.get("/api/v1/rejected?limit=1001")).status_code == 400
        assert (await client.get("/api/v1/series?range=1y")).status_code == 400


# --- 11. bodies over the limit ------------------------------------------------------------------


async def test_a_body_over_the_limit_is_a_counted_json_413_at_any_size(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = with_rules(settings_for, receiver.url, bus={"max_payload_bytes": 4096})
    async with running(Daemon(settings)) as d, http(d, **JSON) as client:

        def too_large() -> float:
            return sample_value(d, "lookout_records_rejected_total", {"reason": "too_large"})

        sizes = (5000, 9000, 5 * 1024 * 1024)  # under 2x the limit, over it, far over
        for n, size in enumerate(sizes, start=1):
            answer = await client.post("/api/v1/records", content=b"[" + b" " * size + b"]")
            assert answer.status_code == 413, size
            assert answer.json()["rejected"][0]["reason"] == "too_large"
            assert too_large() == n

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read up to the limit
            yield b"["
            for _ in range(1000):
                yield b" " * 1024
            yield b"]"

        chunked = await client.post("/api/v1/records", content=chunks())
        assert chunked.status_code == 413 and too_large() == len(sizes) + 1
        silence = await client.post("/api/v1/silences", content=b" " * (5 * 1024 * 1024))
        assert silence.headers["Content-Type"].startswith("application/json")
        assert silence.status_code == 413 and silence.json()["error"]
        assert (await client.post("/api/v1/records", content=b'{"app": "x"}')).status_code == 200


# --- 13. what /api/v1/status quotes -------------------------------------------------------------


async def test_status_redacts_the_texts_that_explain_a_drift(
    settings_for: Callable[..., Settings],
) -> None:
    banking = prompts({"banking", "credit_cards"}, 200)
    travel = prompts({"travel", "auto_and_commute"}, 60)
    leaky = [f"{t} mail me at person{i}@example.com" for i, t in enumerate(travel)]
    async with running(Daemon(detecting(settings_for))) as d:
        await send(d, banking)  # the reference
        await send(d, leaky)
        [detector] = status_of(d)["detectors"]
        assert detector["drifted"] is True
        async with http(d) as client:
            text = (await client.get("/api/v1/status")).text
    explained = json.loads(text)["detectors"][0]["explanation"]
    assert explained["recent_farthest_from_reference"]
    assert "@example.com" not in text
    assert all("[EMAIL]" in t for t in explained["recent_farthest_from_reference"]), explained


# --- 16. state files ----------------------------------------------------------------------------


async def test_state_files_are_private_to_the_user(
    settings_for: Callable[..., Settings], tmp_path: Path, receiver: Receiver
) -> None:
    db = tmp_path / "state" / "deep" / "lookout.db"
    settings = with_rules(settings_for, receiver.url, store={"url": f"sqlite:///{db}"})
    umask = os.umask(0o022)  # a usual login shell's; systemd's UMask=0077 is not there to help
    try:
        async with running(Daemon(settings)):
            pass
    finally:
        os.umask(umask)
    for directory in (tmp_path / "state", db.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    files = [p for p in db.parent.iterdir() if p.name.startswith("lookout.db")]
    assert db in files
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
