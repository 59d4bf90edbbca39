"""Windowed metrics equal hand-computed values on a known stream; memory stays bounded."""

from __future__ import annotations

import random

import pytest
from fastdigest import TDigest

from lookout.monitor.metrics.partials import SPILL_AT, partial_rows
from lookout.monitor.metrics.prices import Price, PriceTable
from lookout.monitor.metrics.windows import ALL, OTHER, WindowedMetrics, stats_by_scope

T0 = 1_700_000_000.0  # a multiple of 10 s: bucket edges fall on round numbers
PRICES = PriceTable({"gpt-4o-mini": Price(0.00015, 0.0006), "gpt-4o": Price(0.0025, 0.01)})


def windows(**kw: float) -> WindowedMetrics:
    return WindowedMetrics(bucket_s=10.0, max_window_s=300.0, started_at=T0, **kw)  # type: ignore[arg-type]


def observe(
    w: WindowedMetrics,
    now: float,
    app: str = "bot",
    model: str = "gpt-4o-mini",
    *,
    error: bool = False,
    latency_ms: float | None = None,
    ttft_ms: float | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
) -> float:
    cost = PRICES.cost(model, input_tokens, output_tokens)
    key = w.labels_for(app, model)
    w.observe(key, now, error, latency_ms, ttft_ms, input_tokens, output_tokens, cost)
    return cost


def test_known_stream_matches_hand_computed_values() -> None:
    w = windows()
    # 60 s of traffic, one request a second: latency 1..60 s (in ms), ttft 100 ms,
    # 100 input + 20 output tokens each; every 10th request an error.
    for i in range(60):
        observe(
            w,
            T0 + i,
            error=(i % 10 == 9),
            latency_ms=(i + 1) * 1000.0,
            ttft_ms=100.0,
            input_tokens=100,
            output_tokens=20,
        )
    now = T0 + 60
    s = stats_by_scope(w.query(60, now))[("bot", "gpt-4o-mini")]
    assert s.count == 60 and s.errors == 6
    assert s.qps == pytest.approx(1.0)
    assert s.tps == pytest.approx(20.0)
    assert s.error_rate == pytest.approx(0.1)
    assert s.tokens_per_request == pytest.approx(120.0)
    # cost per request: 100/1000*0.00015 + 20/1000*0.0006 = 0.000027 $; 3600 requests an hour.
    assert s.cost_per_hour == pytest.approx(0.000027 * 3600)
    # latencies 1..60 s: the t-digest interpolates ranks like numpy's default percentile.
    assert s.latency_p50 == pytest.approx(30.5, rel=0.02)
    assert s.latency_p95 == pytest.approx(57.05, rel=0.02)
    assert s.latency_p99 == pytest.approx(59.41, rel=0.02)
    assert s.ttft_p95 == pytest.approx(0.1)
    # generation speed: 20 tokens over (latency - ttft); the median request is ~30.4 s.
    assert s.gen_tps_p50 == pytest.approx(20 / 30.4, rel=0.03)


def test_scopes_per_app_per_model_and_overall() -> None:
    w = windows()
    observe(w, T0 + 1, app="a", model="gpt-4o", latency_ms=100.0)
    observe(w, T0 + 2, app="a", model="gpt-4o-mini", latency_ms=300.0)
    observe(w, T0 + 3, app="b", model="gpt-4o", latency_ms=500.0, error=True)
    by = stats_by_scope(w.query(60, T0 + 10))
    assert by[("a", ALL)].count == 2
    assert by[(ALL, "gpt-4o")].count == 2
    assert by[(ALL, ALL)].count == 3
    assert by[(ALL, ALL)].error_rate == pytest.approx(1 / 3)
    assert by[("b", "gpt-4o")].latency_p50 == pytest.approx(0.5)
    assert by[(ALL, ALL)].latency_p50 == pytest.approx(0.3)
    assert set(by) == {
        ("a", "gpt-4o"),
        ("a", "gpt-4o-mini"),
        ("b", "gpt-4o"),
        ("a", ALL),
        ("b", ALL),
        (ALL, "gpt-4o"),
        (ALL, "gpt-4o-mini"),
        (ALL, ALL),
    }


def test_window_slides_old_buckets_out() -> None:
    w = windows()
    for i in range(30):
        observe(w, T0 + i, latency_ms=10_000.0)  # slow, early
    for i in range(30, 120):
        observe(w, T0 + i, latency_ms=100.0)  # fast, later
    s = stats_by_scope(w.query(60, T0 + 120))[(ALL, ALL)]
    assert s.count == 60
    assert s.latency_p99 == pytest.approx(0.1)
    assert s.qps == pytest.approx(1.0)


def test_qps_counts_only_time_since_start() -> None:
    w = windows()
    for i in range(20):
        observe(w, T0 + i * 0.5)
    s = stats_by_scope(w.query(300, T0 + 10))[(ALL, ALL)]
    assert s.qps == pytest.approx(2.0)


def test_versioned_model_names_take_their_family_price() -> None:
    w = windows()
    cost = observe(w, T0, model="gpt-4o-mini-2024-07-18", input_tokens=1000, output_tokens=1000)
    assert cost == pytest.approx(0.00015 + 0.0006)
    assert observe(w, T0, model="llama3", input_tokens=1000) == 0.0


def test_label_cardinality_folds_into_other() -> None:
    w = WindowedMetrics(bucket_s=10.0, max_window_s=60.0, max_apps=3, max_models=2)
    for i in range(10):
        observe(w, T0, app=f"app{i}", model=f"m{i}")
    apps = {s.app for s in w.query(60, T0 + 1)}
    assert apps == {"app0", "app1", "app2", OTHER, ALL}
    assert w.cell_count() <= 4 * 3


def test_memory_is_bounded_whatever_the_traffic() -> None:
    w = windows()
    rng = random.Random(7)
    for i in range(20_000):
        observe(w, T0 + i * 0.5, latency_ms=rng.random() * 1000, output_tokens=5)
    w.prune(T0 + 10_000)
    # 300 s window at 10 s buckets: at most 31 buckets per cell, whatever the volume.
    held = sum(1 for c in w._cells.values() for b in c.buckets if b is not None)
    assert held <= 32
    s = stats_by_scope(w.query(300, T0 + 10_000))[(ALL, ALL)]
    assert s.count == pytest.approx(600, abs=20)


def test_idle_cells_are_pruned() -> None:
    w = windows()
    observe(w, T0, app="gone")
    observe(w, T0 + 1000, app="here")
    w.prune(T0 + 1000)
    assert {s.app for s in w.query(300, T0 + 1000)} == {"here", ALL}
    assert w.cell_count() == 1


def test_uncommitted_records_count_at_once_and_each_minute_is_handed_over_once() -> None:
    w = windows()
    for i in range(90):  # 1.5 minutes, one record a second
        observe(w, T0 + 20 + i, latency_ms=(i + 1) * 10.0, input_tokens=10, output_tokens=2)
    before = stats_by_scope(w.query(300, T0 + 110))[("bot", "gpt-4o-mini")]
    assert before.count == 90 and before.latency_p50 == pytest.approx(0.455, rel=0.03)
    rows = partial_rows(w.take_open())
    minute0 = int(T0 // 60) * 60
    counts = {r.minute - minute0: r.count for r in rows}
    # T0 + 20 .. T0 + 109: the minutes that start at T0 - 20, T0 + 40 and T0 + 100 (T0 is 20 s
    # past a minute).
    assert sum(counts.values()) == 90 and len(rows) == len(counts)
    assert all(r.tokens == 12 * r.count for r in rows)
    assert partial_rows(w.take_open()) == []  # handed over once
    after = stats_by_scope(w.query(300, T0 + 110))[("bot", "gpt-4o-mini")]
    assert after == before  # folded into the buckets, not lost nor counted twice


def test_a_partial_nobody_takes_stays_bounded_and_exact() -> None:
    w = windows()
    n = 3 * SPILL_AT + 5
    for i in range(n):  # all in one bucket
        observe(w, T0 + i * 1e-4, latency_ms=float(i % 1000) + 1.0)
    (bucket,) = [b for c in w._cells.values() for b in c.buckets if b is not None]
    assert bucket.open is not None and len(bucket.open.latency_s) <= SPILL_AT
    s = stats_by_scope(w.query(300, T0 + 5))[("bot", "gpt-4o-mini")]
    assert s.count == n and s.latency_p50 == pytest.approx(0.5, rel=0.03)
    (row,) = partial_rows(w.take_open())
    assert row.count == n and row.latency_s is not None
    assert TDigest.from_bytes(row.latency_s).n_values == n
