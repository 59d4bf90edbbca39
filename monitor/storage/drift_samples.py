"""Sampled embeddings that nodes of a cluster share so that one node's drift windows see the
whole cluster's traffic (docs/scale-out.md "Drift and OOD across nodes"): each node commits
what it embedded per (app, field) as float16 rows; the node that scores drift reads the other
nodes' rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class DriftSample:
    """One batch's embeddings of one (app, field) on one node, scored against `ref_id`:
    `flagged` of its `n` texts were out of distribution."""

    node: str
    app: str
    field: str
    ref_id: int
    at: float  # epoch seconds of the batch's last text
    flagged: int
    embeddings: NDArray[np.float16]  # n x dim, oldest first
    id: int = 0  # set by the store: increasing per node in commit order

    @property
    def n(self) -> int:
        return len(self.embeddings)


class DriftSamples(Protocol):
    async def put(self, samples: Sequence[DriftSample]) -> None:
        """This node's samples, in one transaction."""
        ...

    async def after(self, cursors: dict[str, int], floor: int, limit: int) -> list[DriftSample]:
        """The other nodes' samples past each node's cursor (its last id read; `floor` for a
        node not in `cursors`), by id, at most `limit`."""
        ...

    async def latest(self, texts: int) -> list[DriftSample]:
        """Every node's newest samples holding at least `texts` texts per (app, field) when
        there are that many, by id."""
        ...

    async def prune(self, before: float, keep_texts: int) -> int:
        """This node's samples older than `before` or beyond its newest `keep_texts` texts
        per (app, field); how many texts went."""
        ...
