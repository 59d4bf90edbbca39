"""Which ok records the store keeps (`store.record_sample_rate`): a draw keyed on the record's
id, so a shadow record (`metadata.shadow_of`, docs/judge.md) is kept exactly when the
production record it names is, whichever arrives first and on whichever node: the judge can
only grade pairs whose two halves are both stored.

The key is the id the shadow names (`shadow_of`) when there is one, else the record's own id;
records without an id get an independent random draw (nothing can name them). The draw is a
CRC-32 of the key against the rate: uniform enough for a share, the same in every process
(Python's `hash` is salted per process), about 0.1 us a record.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

import msgspec

_SPAN = 1 << 32  # CRC-32 values


class RecordSampler:
    def __init__(
        self, rate: float, shadow_key: str, rng: Callable[[], float] | None = None
    ) -> None:
        self.rate = rate
        self._below = int(rate * _SPAN)  # keys whose CRC is below this are kept
        self._shadow_key = shadow_key
        self._marker = f'"{shadow_key}"'  # a cheap test before decoding the metadata
        self.random = rng or random.random

    def keep(self, record_id: str | None, metadata: str | None) -> bool:
        """Whether an ok record is stored."""
        key = record_id
        if metadata is not None and self._marker in metadata:
            key = self.production_of(metadata) or record_id
        if key is None:
            return self.random() < self.rate
        return zlib.crc32(key.encode()) < self._below

    def production_of(self, metadata: str) -> str | None:
        """The production record's id a shadow record's metadata (a JSON object) names."""
        try:
            production = msgspec.json.decode(metadata).get(self._shadow_key)
        except (msgspec.DecodeError, AttributeError):
            return None
        return production if isinstance(production, str) and production else None
