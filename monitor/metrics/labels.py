"""Bounded label values: an app or model past the cap is counted as `other`."""

from __future__ import annotations

from collections.abc import Iterable

from lookout.series import OTHER


class LabelFolder:
    """Caps label cardinality: values past the cap fold into `other`, pinned ones never do.

    A slot is given back by `release` (the windows pick the apps gone quiet), so names
    flooded in once do not shut out an app that arrives later.
    """

    def __init__(self, max_values: int, pinned: Iterable[str] = ()) -> None:
        self._max = max_values
        self.pinned = frozenset(pinned)
        self._seen: dict[str, str] = {}
        self._holding = 0  # unpinned values holding a slot
        self.waiting = 0  # distinct values folded since the last release (up to the bound)

    def fold(self, value: str) -> str:
        folded = self._seen.get(value)
        if folded is None:
            if value in self.pinned:
                folded = self._seen[value] = value
            elif self._holding < self._max:
                folded = self._seen[value] = value
                self._holding += 1
            else:
                folded = OTHER
                if len(self._seen) < self._max * 4 + len(self.pinned):
                    # Remember overflow values too, up to a bound, to keep the lookup cheap.
                    self._seen[value] = folded
                    self.waiting += 1
        return folded

    def holding(self) -> list[str]:
        """The unpinned values that hold a slot."""
        return [v for v, f in self._seen.items() if f == v and v not in self.pinned]

    def release(self, values: Iterable[str]) -> None:
        """Give the slots of `values` back; folded values are looked at afresh."""
        gone = set(values) - self.pinned
        self._holding -= sum(1 for v in gone if self._seen.get(v) == v)
        self._seen = {v: f for v, f in self._seen.items() if f != OTHER and v not in gone}
        self.waiting = 0
