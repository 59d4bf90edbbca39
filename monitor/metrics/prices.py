"""Per-model prices turned into a cost per record: the config's `prices` table first, then the
maintained `genai-prices` package (its bundled snapshot: nothing is fetched at run time).

A record whose model has no price anywhere costs 0 and is counted in
`lookout_cost_unknown_model_total{model}`, so a zero cost is never silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

OTHER = "other"  # the label of unknown models past the first `max_models`
_CACHE_MODELS = 10_000


@dataclass(frozen=True, slots=True)
class Price:
    input_per_1k: float
    output_per_1k: float


def library_price(model: str) -> Price | None:
    """The current price of `model` in genai-prices' bundled data, or None if it has none.

    Per 1,000 tokens of each kind alone, so a tier that starts at a long prompt is not taken.
    """
    from genai_prices import Usage, calc_price  # ~0.2 s to import: not for every CLI command

    try:
        prompt = calc_price(Usage(input_tokens=1000), model_ref=model)
        completion = calc_price(Usage(output_tokens=1000), model_ref=model)
    except LookupError:
        return None
    return Price(float(prompt.input_price), float(completion.output_price))


class UnknownModels:
    """`lookout_cost_unknown_model_total{model}`: the first `max_models` names, then "other"."""

    def __init__(self, registry: CollectorRegistry, max_models: int = 50) -> None:
        self._counter = Counter(
            "lookout_cost_unknown_model",
            "Records whose model has no known price (their cost counts as 0)",
            ["model"],
            registry=registry,
        )
        self._max = max_models
        self._named: set[str] = set()

    def inc(self, model: str) -> None:
        if model not in self._named:
            if len(self._named) >= self._max:
                model = OTHER
            else:
                self._named.add(model)
        self._counter.labels(model).inc()


_UNCACHED = Price(-1.0, -1.0)  # not a price: "not looked up yet"


class PriceTable:
    """Per-1k-token prices; a versioned model name (gpt-4o-mini-2024-07-18) matches its prefix.

    `overrides` (the config) win over the library; `library=False` uses them alone.
    """

    def __init__(
        self,
        overrides: Mapping[str, Price],
        *,
        library: bool = True,
        unknown: UnknownModels | None = None,
    ) -> None:
        self._prices = dict(overrides)
        self._library = library
        if library:
            # Its import and its bundled snapshot's load (~0.25 s together) happen here, not on
            # the first record's path through the event loop.
            library_price("gpt-4o-mini")
        self._unknown = unknown
        self._cache: dict[str, Price | None] = {}

    def lookup(self, model: str) -> Price | None:
        if model in self._cache:
            return self._cache[model]
        best: Price | None = self._prices.get(model)
        if best is None:
            matches = [m for m in self._prices if model.startswith(m)]
            if matches:
                best = self._prices[max(matches, key=len)]
        if best is None and self._library:
            best = library_price(model)
        if len(self._cache) < _CACHE_MODELS:
            self._cache[model] = best
        return best

    def cost(self, model: str, input_tokens: int | None, output_tokens: int | None) -> float:
        """Cost of one call; 0 for a model without a price, counted."""
        price = self._cache.get(model, _UNCACHED)
        if price is _UNCACHED:
            price = self.lookup(model)
        if price is None:
            if self._unknown is not None:
                self._unknown.inc(model)
            return 0.0
        return (
            (input_tokens or 0) * price.input_per_1k + (output_tokens or 0) * price.output_per_1k
        ) / 1000.0
