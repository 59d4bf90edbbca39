"""Per-model prices from config, turned into a cost per record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    input_per_1k: float
    output_per_1k: float


class PriceTable:
    """Per-1k-token prices; a versioned model name (gpt-4o-mini-2024-07-18) matches its prefix."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._cache: dict[str, Price | None] = {}

    def lookup(self, model: str) -> Price | None:
        if model in self._cache:
            return self._cache[model]
        best: Price | None = self._prices.get(model)
        if best is None:
            matches = [m for m in self._prices if model.startswith(m)]
            if matches:
                best = self._prices[max(matches, key=len)]
        if len(self._cache) < 10_000:
            self._cache[model] = best
        return best

    def cost(self, model: str, input_tokens: int | None, output_tokens: int | None) -> float:
        """Cost of one call; 0 for a model without a price."""
        price = self.lookup(model)
        if price is None:
            return 0.0
        return (
            (input_tokens or 0) * price.input_per_1k + (output_tokens or 0) * price.output_per_1k
        ) / 1000.0
