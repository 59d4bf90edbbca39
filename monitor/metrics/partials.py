"""Per-minute partial aggregates: what each commit group adds to the stored minutes.

The pipeline counts each record once, into the open `Partial` of its window bucket
(windows.py): the uncommitted tail, which window queries read beside the bucket's committed
counts. When the store closes a commit group, the windows fold every open partial into its
bucket and hand the partials over; `partial_rows` merges those of one (app, model, minute)
into the `PartialRow`s that the group's transaction adds to the stored minute (counts and
sums add; t-digests merge), with the group's sampled rows and record ids. A minute in the store
is therefore exactly the committed records, each once; after a restart the windows are seeded
from the stored minutes, so they hold the committed partials plus the new process's tail.

Latencies are appended to lists on the per-record path (a list append costs a third of a
t-digest update) and go into t-digests once per group, in one batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastdigest import TDigest

from lookout.monitor.storage.base import PartialRow

MINUTE_S = 60
CENTROIDS = 100
# A partial nobody takes (windows used without a store) keeps at most this many values a
# list before they are compressed into its own t-digests.
SPILL_AT = 4096


class Partial:
    """One window bucket's records since the last commit group closed."""

    __slots__ = (
        "cost",
        "count",
        "errors",
        "gen_tps",
        "latency_s",
        "output_tokens",
        "spilled",
        "token_records",
        "tokens",
        "ttft_s",
    )

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.output_tokens = 0
        self.tokens = 0
        self.token_records = 0
        self.cost = 0.0
        self.latency_s: list[float] = []
        self.ttft_s: list[float] = []
        self.gen_tps: list[float] = []
        self.spilled: tuple[TDigest, TDigest, TDigest] | None = None

    def spill(self) -> None:
        """Compress the value lists into this partial's own digests (bounded memory)."""
        if self.spilled is None:
            self.spilled = (new_digest(), new_digest(), new_digest())
        for digest, values in zip(self.spilled, self.values(), strict=True):
            if values:
                digest.batch_update(values)
                values.clear()

    def values(self) -> tuple[list[float], list[float], list[float]]:
        return self.latency_s, self.ttft_s, self.gen_tps

    def digests(self) -> tuple[TDigest | None, TDigest | None, TDigest | None]:
        """Latency, TTFT and generation-rate digests of everything in this partial."""
        spilled = self.spilled or (None, None, None)
        return (
            _digest(self.latency_s, spilled[0]),
            _digest(self.ttft_s, spilled[1]),
            _digest(self.gen_tps, spilled[2]),
        )

    def merge(self, other: Partial) -> None:
        add_counts(self, other)
        for mine, theirs in zip(self.values(), other.values(), strict=True):
            mine.extend(theirs)
        if other.spilled is not None:
            self.spill()
            assert self.spilled is not None
            for mine_d, theirs_d in zip(self.spilled, other.spilled, strict=True):
                mine_d.merge_inplace(theirs_d)


# The counters a partial, a window bucket and a stored minute (PartialRow) share by name.
COUNTERS = ("count", "errors", "output_tokens", "tokens", "token_records", "cost")


def add_counts(into: object, other: object) -> None:
    """Add `other`'s counters to `into`'s (once per group or stored minute, not per record)."""
    for name in COUNTERS:
        setattr(into, name, getattr(into, name) + getattr(other, name))


def new_digest() -> TDigest:
    return TDigest(max_centroids=CENTROIDS)


def _digest(values: list[float], spilled: TDigest | None) -> TDigest | None:
    if not values:
        return None if spilled is None or spilled.is_empty() else spilled.copy()
    digest = new_digest() if spilled is None else spilled.copy()
    digest.batch_update(values)
    return digest


def partial_rows(taken: Iterable[tuple[str, str, int, Partial]]) -> list[PartialRow]:
    """The (app, model, minute, partial) a group took, merged per minute, as store rows."""
    merged: dict[tuple[str, str, int], Partial] = {}
    for app, model, minute, part in taken:
        key = (app, model, minute)
        held = merged.get(key)
        if held is None:
            merged[key] = part
        else:
            held.merge(part)
    return [_row(app, model, minute, p) for (app, model, minute), p in merged.items()]


def _row(app: str, model: str, minute: int, p: Partial) -> PartialRow:
    latency, ttft, gen = (None if d is None else bytes(d.to_bytes()) for d in p.digests())
    return PartialRow(
        minute=minute,
        app=app,
        model=model,
        count=p.count,
        errors=p.errors,
        output_tokens=p.output_tokens,
        tokens=p.tokens,
        token_records=p.token_records,
        cost=p.cost,
        latency_s=latency,
        ttft_s=ttft,
        gen_tps=gen,
    )
