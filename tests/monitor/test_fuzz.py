"""Property-based fuzzing (Hypothesis) of the decoder, the HTTP ingest of a real running daemon
and the API's query parameters: every input gets a result or a counted rejection, never an
unhandled exception or a 500, and the good records of a mixed batch always come through.

Kept to a few seconds in CI: few examples per property, no deadline (the box is shared), no
example database on disk. bench/fuzz.py runs 100,000 payloads through a real broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lookout.monitor.daemon import Daemon
from lookout.monitor.ingest.records import DecodeLimits, RejectReason, WireRecord, decode_payload
from tests.conftest import make_settings

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Every key the wire format knows (aliases included), from the decoder's own struct.
FIELDS = [f.encode_name for f in msgspec.structs.fields(WireRecord)]
REASONS = {r.value for r in RejectReason}
LIMITS = DecodeLimits(max_payload_bytes=256 * 1024, max_records_per_message=50)

special_strings = st.sampled_from(
    ["ok", "error", "2024-05-01T12:00:00Z", "2024-05-01", "a\u0000b", "<!channel>", ""]
)
strict_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | special_strings
)
# NaN and infinities too: json.dumps writes them as invalid JSON.
leaves = strict_leaves | st.sampled_from([float("nan"), float("inf"), -float("inf")])


def nested(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=25,
    )


json_values = nested(leaves)
# Objects that look like records: the wire format's own field names with any values.
record_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
anything = record_like | json_values
# Valid JSON only (no NaN or infinities), for batches that must parse.
strict_record_like = st.dictionaries(
    st.sampled_from(FIELDS),
    nested(strict_leaves),
    max_size=8,
)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


nesting = st.integers(min_value=1, max_value=5000).map(
    lambda depth: b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
)
payloads = (
    anything.map(dumps)
    | st.lists(anything, max_size=60).map(dumps)
    | st.binary(max_size=300)
    | nesting
)

_ids = itertools.count()
good_records = st.builds(
    lambda app, prompt, latency, tokens: {
        "id": f"good-{next(_ids)}",
        "app": app,
        "prompt": prompt,
        "latency_ms": latency,
        "input_tokens": tokens,
    },
    st.text(min_size=1, max_size=20),
    st.text(max_size=50),
    st.floats(min_value=0, max_value=86_400_000),
    st.integers(min_value=0, max_value=10**9),
)


@FUZZ
@given(payloads)
def test_the_decoder_answers_every_payload_with_records_or_reasons(payload: bytes) -> None:
    out = decode_payload(payload, "llm/records/fuzz", 1_700_000_000.0, LIMITS)
    assert all(r.reason.value in REASONS and r.count >= 1 for r in out.rejections)
    assert out.records or out.rejections or payload.strip() == b"[]"


@FUZZ
@given(st.lists(anything, min_size=1, max_size=120))
def test_every_record_of_a_batch_is_ingested_or_rejected(batch: list[Any]) -> None:
    out = decode_payload(dumps(batch), None, 1_700_000_000.0, LIMITS)
    if [r.reason for r in out.rejections] in ([RejectReason.INVALID_JSON], [RejectReason.TOO_DEEP]):
        return  # NaN or infinity written by json.dumps, or nesting: the message as a whole
    assert len(out.records) + sum(r.count for r in out.rejections) == len(batch)


@FUZZ
@given(
    st.lists(good_records, min_size=1, max_size=10),
    st.lists(strict_record_like, max_size=10),
    st.randoms(),
)
def test_the_good_records_of_a_mixed_batch_come_through(
    good: list[dict[str, Any]], bad: list[Any], rnd: Any
) -> None:
    batch = good + bad
    rnd.shuffle(batch)
    out = decode_payload(json.dumps(batch, allow_nan=False).encode(), None, 0.0, LIMITS)
    ids = {r.id for r in out.records}
    assert {g["id"] for g in good} <= ids


class DaemonThread:
    """A real daemon on its own event loop, so Hypothesis can drive it with a plain client."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = make_settings(
            tmp_path, "fuzz-http", metrics={"max_records_per_message": 50}
        )
        self.daemon: Daemon | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.daemon = Daemon(self.settings)
        task = asyncio.create_task(self.daemon.run(self._stop))
        ready = asyncio.ensure_future(self.daemon.ready.wait())
        await asyncio.wait([ready, task], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        self._ready.set()
        await task

    def __enter__(self) -> DaemonThread:
        self._thread.start()
        assert self._ready.wait(20) and self.daemon is not None and self.daemon.api is not None
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    @property
    def url(self) -> str:
        assert self.daemon is not None and self.daemon.api is not None
        return f"http://127.0.0.1:{self.daemon.api.port}"

    def rejected_total(self) -> float:
        assert self.daemon is not None
        return sum(
            s.value
            for m in self.daemon.registry.collect()
            if m.name == "lookout_records_rejected"
            for s in m.samples
            if s.name == "lookout_records_rejected_total"
        )


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonThread, httpx.Client]]:
    with (
        DaemonThread(tmp_path_factory.mktemp("fuzz")) as d,
        httpx.Client(base_url=d.url, headers={"Content-Type": "application/json"}) as c,
    ):
        yield d, c


@FUZZ
@given(payloads)
def test_http_ingest_answers_every_payload_and_counts_every_rejection(
    http: tuple[DaemonThread, httpx.Client], payload: bytes
) -> None:
    daemon, client = http
    before = daemon.rejected_total()
    r = client.post("/api/v1/records", content=payload)
    assert r.status_code in (200, 400, 413), r.text
    body = r.json()
    assert set(body) == {"accepted", "duplicates", "rejected"}
    assert {x["reason"] for x in body["rejected"]} <= REASONS
    assert (daemon.rejected_total() > before) == bool(body["rejected"])


@FUZZ
@given(st.lists(good_records, min_size=1, max_size=10), st.lists(strict_record_like, max_size=10))
def test_http_ingest_lets_the_good_records_of_a_mixed_batch_through(
    http: tuple[DaemonThread, httpx.Client], good: list[dict[str, Any]], bad: list[Any]
) -> None:
    _, client = http
    batch = [x for pair in itertools.zip_longest(good, bad) for x in pair if x is not None]
    payload = json.dumps(batch, allow_nan=False).encode()
    body = client.post("/api/v1/records", content=payload).json()
    assert body["accepted"] >= len(good)
    assert body["accepted"] + body["duplicates"] + len(body["rejected"]) == len(batch)


query_values = st.text(max_size=30) | st.integers().map(str) | st.floats().map(str)
GETS = [
    "/api/v1/status",
    "/api/v1/rejected",
    "/api/v1/alerts",
    "/api/v1/silences",
    "/api/v1/series",
    "/api/v1/ood",
    "/api/v1/judge/failures",
    "/",
]


@FUZZ
@given(
    st.sampled_from(GETS),
    st.dictionaries(
        st.sampled_from(["limit", "range", "window", "app", "token", "x"]), query_values
    ),
)
def test_query_parameters_never_cause_a_server_error(
    http: tuple[DaemonThread, httpx.Client], path: str, params: dict[str, str]
) -> None:
    _, client = http
    # Without an API token the dashboard sets a cookie from any `token` value: not sent back.
    client.cookies.clear()
    r = client.get(path, params=params)
    assert r.status_code < 500, (path, params, r.text)


@FUZZ
@given(st.text(min_size=1, max_size=300))
def test_any_record_id_or_asset_name_is_answered(
    http: tuple[DaemonThread, httpx.Client], name: str
) -> None:
    _, client = http
    quoted = urllib.parse.quote(name, safe="")
    for path in (f"/api/v1/records/{quoted}", f"/assets/{quoted}"):
        assert client.get(path).status_code in (200, 404, 400), path
