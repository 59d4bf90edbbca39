"""Per-minute partials on PostgreSQL: each process writes its own rows, as absolute values.

A node's partial for an (app, model, minute) is the sum of what its committed groups added.
Reading that back (`FOR UPDATE`) to merge each group's t-digests into it cost a round trip and
a decode of the stored digests per group, which is most of a small group's cost. Instead, each
process keeps the running total of the rows it has written (`WriterPartials`) and writes that
total under a writer id of its own (`partials.writer`, migration 7): no read, and a retried
write puts the same values again, so the write is idempotent. Two processes never share a
writer id (a random prefix per process), so a restarted node, or two processes misconfigured
with one `node.id`, add up rather than overwrite each other; readers merge every row of a
minute (`merged_by_minute`), as they merge the nodes'. A process forgets a minute
`_KEEP_MINUTES` after the newest it has written; a record that arrives later for it starts a
new writer id, so it is counted, in a row of its own.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from lookout.monitor.storage.base import PartialRow
from lookout.monitor.storage.groups import merge_digests

if TYPE_CHECKING:
    from collections.abc import Iterable

_KEEP_MINUTES = 10
_encode = msgspec.json.Encoder().encode

# One JSON array of rows (t-digests in base64, as msgspec writes bytes), unpacked by the server.
UPSERT_PARTIALS = (
    "INSERT INTO partials (node, writer, minute, app, model, count, errors, output_tokens,"
    " tokens, token_records, cost, latency_s, ttft_s, gen_tps)"
    " SELECT %(node)s, v->>0, (v->>1)::bigint, v->>2, v->>3, (v->>4)::bigint, (v->>5)::bigint,"
    " (v->>6)::bigint, (v->>7)::bigint, (v->>8)::bigint, (v->>9)::float8,"
    " decode(v->>10, 'base64'), decode(v->>11, 'base64'), decode(v->>12, 'base64')"
    " FROM jsonb_array_elements(%(partials)s::jsonb) AS p(v)"
    " ON CONFLICT (minute, app, model, node, writer) DO UPDATE SET count = excluded.count,"
    " errors = excluded.errors, output_tokens = excluded.output_tokens,"
    " tokens = excluded.tokens, token_records = excluded.token_records, cost = excluded.cost,"
    " latency_s = excluded.latency_s, ttft_s = excluded.ttft_s, gen_tps = excluded.gen_tps"
)


@dataclass(frozen=True, slots=True)
class WriterRow:
    """A process's running total for an (app, model, minute), under its writer id."""

    writer: str
    row: PartialRow


def _float8(x: float) -> float | str:
    # JSON has no NaN or infinity (msgspec writes null); PostgreSQL's float8 reads these.
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def rows_json(rows: Iterable[WriterRow]) -> str:
    """`rows` as `UPSERT_PARTIALS` takes them."""
    return _encode([_values(w.writer, w.row) for w in rows]).decode()


def _values(writer: str, r: PartialRow) -> tuple[Any, ...]:
    counts = (r.count, r.errors, r.output_tokens, r.tokens, r.token_records, _float8(r.cost))
    return (writer, r.minute, r.app, r.model, *counts, r.latency_s, r.ttft_s, r.gen_tps)


class WriterPartials:
    """The running totals this process has committed, per (minute, app, model)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._started = 0
        self._totals: dict[tuple[int, str, str], WriterRow] = {}
        self._newest = 0

    def advance(self, partials: list[PartialRow]) -> list[WriterRow]:
        """The totals once `partials` (a group's) are added; held only after `settle`. A
        group's retry must write what its first attempt computed: compute once per group."""
        out = []
        for key, p in merged(partials).items():
            held = self._totals.get(key)
            if held is None:
                self._started += 1
                out.append(WriterRow(f"{self._prefix}.{self._started:x}", p))
            else:
                out.append(WriterRow(held.writer, add_partials(held.row, p)))
        return out

    def settle(self, written: list[WriterRow]) -> None:
        """`written` is committed: these are the totals now (older minutes forgotten)."""
        for w in written:
            self._totals[(w.row.minute, w.row.app, w.row.model)] = w
        newest = max((w.row.minute for w in written), default=0)
        if newest > self._newest:  # a new minute: about once a minute
            self._newest = newest
            horizon = newest - _KEEP_MINUTES * 60
            for key in [k for k in self._totals if k[0] < horizon]:
                del self._totals[key]

    def forget(self, rows: list[WriterRow]) -> None:
        """Drop the totals of `rows`' minutes: a group that may or may not have been written
        left them unknown. Later groups start new writer rows for them, so whichever it was,
        every committed row is counted once."""
        for w in rows:
            self._totals.pop((w.row.minute, w.row.app, w.row.model), None)

    def __len__(self) -> int:
        return len(self._totals)


def merged(partials: list[PartialRow]) -> dict[tuple[int, str, str], PartialRow]:
    """The group's partials, one per (minute, app, model)."""
    by_key: dict[tuple[int, str, str], PartialRow] = {}
    for p in partials:
        key = (p.minute, p.app, p.model)
        q = by_key.get(key)
        by_key[key] = p if q is None else add_partials(q, p)
    return by_key


def merged_by_minute(rows: list[tuple[Any, ...]]) -> list[PartialRow]:
    """Partial rows ordered by (minute, app, model), each key's rows (nodes, writers) merged."""
    out: list[PartialRow] = []
    for row in rows:
        p = PartialRow(*row)
        last = out[-1] if out else None
        if last is not None and (last.minute, last.app, last.model) == row[:3]:
            out[-1] = add_partials(last, p)
        else:
            out.append(p)
    return out


def add_partials(a: PartialRow, b: PartialRow) -> PartialRow:
    """Two partials of one (minute, app, model) as one: sums, and merged t-digests."""
    return PartialRow(
        a.minute,
        a.app,
        a.model,
        a.count + b.count,
        a.errors + b.errors,
        a.output_tokens + b.output_tokens,
        a.tokens + b.tokens,
        a.token_records + b.token_records,
        a.cost + b.cost,
        merge_digests(a.latency_s, b.latency_s),
        merge_digests(a.ttft_s, b.ttft_s),
        merge_digests(a.gen_tps, b.gen_tps),
    )
