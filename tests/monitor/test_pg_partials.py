"""A process's running totals of the partials it wrote to PostgreSQL (no database needed)."""

from __future__ import annotations

from fastdigest import TDigest

from lookout.monitor.storage.base import PartialRow
from lookout.monitor.storage.pg_partials import WriterPartials, merged_by_minute

T0 = 1_700_000_040


def row(minute: int, count: int, *latencies: float, app: str = "a") -> PartialRow:
    digest = bytes(TDigest.from_values(list(latencies)).to_bytes()) if latencies else None
    return PartialRow(minute, app, "m", count, 0, 0, 0, 0, 0.0, digest, None, None)


def test_totals_grow_only_once_a_write_is_settled() -> None:
    totals = WriterPartials()
    first = totals.advance([row(T0, 2, 0.1), row(T0, 1, 0.5)])  # one group, one key: merged
    assert [w.row.count for w in first] == [3]
    again = totals.advance([row(T0, 4, 0.2)])  # the first was not committed: not in the total
    assert [w.row.count for w in again] == [4]
    totals.settle(first)
    (after,) = totals.advance([row(T0, 4, 0.2)])
    assert after.writer == first[0].writer
    assert after.row.count == 7
    assert after.row.latency_s is not None
    assert TDigest.from_bytes(after.row.latency_s).quantile(1.0) == 0.5


def test_a_day_of_minutes_keeps_only_the_last_few_in_memory() -> None:
    totals = WriterPartials()
    for m in range(1440):
        totals.settle(totals.advance([row(T0 + 60 * m, 1, app=f"app{k}") for k in range(5)]))
    assert len(totals) <= 11 * 5


def test_writers_of_two_processes_never_collide() -> None:
    one, two = WriterPartials(), WriterPartials()
    (a,) = one.advance([row(T0, 1)])
    (b,) = two.advance([row(T0, 1)])
    assert a.writer != b.writer


def test_rows_of_one_minute_from_several_writers_merge_on_read() -> None:
    stored = [
        (T0, "a", "m", 2, 0, 0, 0, 0, 0.0, row(T0, 2, 0.1).latency_s, None, None),
        (T0, "a", "m", 3, 1, 0, 0, 0, 0.5, row(T0, 3, 0.9).latency_s, None, None),
        (T0 + 60, "a", "m", 1, 0, 0, 0, 0, 0.0, None, None, None),
    ]
    first, second = merged_by_minute(stored)
    assert (first.count, first.errors, first.cost, second.count) == (5, 1, 0.5, 1)
    assert first.latency_s is not None
    assert TDigest.from_bytes(first.latency_s).quantile(1.0) == 0.9
