"""Per-minute partial aggregates: what each commit group adds to the stored minutes.

The pipeline counts every record twice: into the live windows (read by rules, the API and the
charts' live minutes) and into the open commit group's partials, one `Partial` per (app, model,
minute) it touched. When the store closes the group it takes the partials as `PartialRow`s and
adds them, in the same transaction as the group's sampled rows and record ids, to the stored
minute (counts and sums add; t-digests merge). A minute in the store is therefore exactly the
committed records, each once; after a restart the windows are seeded from the stored minutes,
so they hold the committed partials plus the uncommitted tail of the new process.

Latencies are appended to lists on the per-record path (cheaper than a t-digest update) and
compressed into t-digests when the group closes.
"""

from __future__ import annotations

from fastdigest import TDigest

from lookout.monitor.storage.base import PartialRow

MINUTE_S = 60
_CENTROIDS = 100


class Partial:
    """One (app, model, minute)'s records in one commit group."""

    __slots__ = (
        "cost",
        "count",
        "errors",
        "gen_tps",
        "latency_s",
        "output_tokens",
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


def _digest(values: list[float]) -> bytes | None:
    if not values:
        return None
    digest = TDigest(max_centroids=_CENTROIDS)
    digest.batch_update(values)
    return bytes(digest.to_bytes())


class GroupPartials:
    """The open commit group's partials; `take` hands them over as rows and starts afresh."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str, int], Partial] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(  # noqa: PLR0917 - positional on the hot path, like WindowedMetrics.observe
        self,
        key: tuple[str, str],
        now: float,
        error: bool,
        latency_ms: float | None,
        ttft_ms: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cost: float,
        /,
    ) -> None:
        """Count one record at `now` under the folded labels `key`."""
        minute = int(now // MINUTE_S) * MINUTE_S
        cell_key = (key[0], key[1], minute)
        part = self._open.get(cell_key)
        if part is None:
            part = self._open[cell_key] = Partial()
        part.count += 1
        if error:
            part.errors += 1
        if latency_ms is not None:
            part.latency_s.append(latency_ms / 1000.0)
        if ttft_ms is not None:
            part.ttft_s.append(ttft_ms / 1000.0)
        part.cost += cost
        if input_tokens is not None or output_tokens is not None:
            tout = output_tokens or 0
            part.tokens += (input_tokens or 0) + tout
            part.token_records += 1
            part.output_tokens += tout
            if tout and latency_ms:
                # As the windows count it: output tokens over the time after the first token.
                gen_ms = latency_ms - ttft_ms if ttft_ms and latency_ms > ttft_ms else latency_ms
                part.gen_tps.append(tout / (gen_ms / 1000.0))

    def take(self) -> list[PartialRow]:
        """The group's partials as rows for the store; the next group starts empty."""
        parts, self._open = self._open, {}
        return [
            PartialRow(
                minute=minute,
                app=app,
                model=model,
                count=p.count,
                errors=p.errors,
                output_tokens=p.output_tokens,
                tokens=p.tokens,
                token_records=p.token_records,
                cost=p.cost,
                latency_s=_digest(p.latency_s),
                ttft_s=_digest(p.ttft_s),
                gen_tps=_digest(p.gen_tps),
            )
            for (app, model, minute), p in parts.items()
        ]
