"""Which records the detectors embed: a rate per app, a CPU budget shared fairly between apps,
and a load factor that backs off while the embedder falls behind. Errors are always embedded,
outside the budget.

The budget is a share of one core (`detectors.max_cpu_share`), turned into texts a second by
the CPU the detection thread measured per text (`CpuBudget`), at most `max_texts_per_s`: one
setting holds for any embedder and text length (the static embedder costs ~0.15 ms a text,
MiniLM on ONNX Runtime 7-13 ms on the same prompts: a budget in texts would let it take
several cores, bench/ingest.py --embedder onnx).

Fair sharing: each interval's budget is split max-min fairly by the texts each app wanted in
the interval before (an app that wants less than an equal share gets all it wants, the others
split the rest equally); what no app was given is a pool any app draws from once its share is
spent. So a loud app takes the budget only when the others leave it, and a quiet app's texts
are embedded however loud its neighbours are.

Plain bookkeeping with no clock or I/O: the detection service calls `admit` on the hot path
and `tick` once an interval.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lookout.series import OTHER  # apps beyond `max_apps` are counted together under this name


def fair_shares(demand: Mapping[str, float], total: float) -> dict[str, float]:
    """Max-min fair split of `total` by `demand` (water-filling)."""
    shares: dict[str, float] = {}
    remaining = total
    ordered = sorted(demand.items(), key=lambda item: item[1])
    for i, (app, wanted) in enumerate(ordered):
        shares[app] = min(wanted, remaining / (len(ordered) - i))
        remaining -= shares[app]
    return shares


_GUESS_COST_S = 2e-3  # between the static embedder (~0.15 ms a text) and MiniLM (2-13 ms)


class CpuBudget:
    """Texts a second that fit in `cpu_share` of a core, from the measured CPU per text."""

    _MIN_TEXTS = 32  # texts measured before an estimate moves
    _WEIGHT = 0.3  # of the newest measurement in the running estimate

    def __init__(self, cpu_share: float, max_texts_per_s: float) -> None:
        self._share = cpu_share
        self._max = max_texts_per_s
        # Until measured, a cautious guess: admitting the cap before the first measurement let
        # MiniLM on ONNX Runtime (~10 ms a text) queue 10 s of a core in its first second.
        self.cost_per_text_s = _GUESS_COST_S
        self.measured = False
        self._cpu_s = 0.0
        self._texts = 0

    def observe(self, cpu_s: float, texts: int) -> None:
        """CPU seconds the detection thread spent on a batch of `texts` texts."""
        self._cpu_s += cpu_s
        self._texts += texts
        if self._texts < (self._MIN_TEXTS if self.measured else 1):
            return  # the first batch replaces the guess at once, however small
        sample = max(self._cpu_s / self._texts, 1e-7)
        # Texts dearer than thought (longer than the made-up ones) count at once; cheaper ones
        # ease the estimate down: overrunning the share costs the apps beside us.
        w = self._WEIGHT if self.measured and sample < self.cost_per_text_s else 1.0
        self.cost_per_text_s = (1 - w) * self.cost_per_text_s + w * sample
        self.measured = True
        self._cpu_s, self._texts = 0.0, 0

    def texts_per_s(self) -> float:
        return min(self._max, self._share / self.cost_per_text_s)


@dataclass(frozen=True, slots=True)
class AppSlots:
    """How many apps the detectors keep apart (the rest share OTHER), the apps that always
    get their own slot besides, and how long an app stays quiet before its slot goes back."""

    max_apps: int = 200
    pinned: frozenset[str] = frozenset()
    reclaim_after_s: float = 900.0


class _App:
    """One app's counts for the interval under way (on the hot path: attributes, not dicts)."""

    __slots__ = ("accepted", "idle_intervals", "offered", "rate", "share", "wanted")

    def __init__(self, rate: float) -> None:
        self.rate = rate  # configured, before the load factor
        self.share = 0.0  # of this interval's budget, left
        self.offered = self.wanted = self.accepted = 0
        self.idle_intervals = 0  # in a row without a record


class Sampler:
    def __init__(
        self,
        *,
        rate: float,
        app_rates: Mapping[str, float],
        texts_per_s: float,
        interval_s: float,
        slots: AppSlots,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._rate = rate
        self._app_rates = dict(app_rates)
        self._per_interval = texts_per_s * interval_s
        self._max_apps = slots.max_apps
        self._pinned = slots.pinned  # never folded into OTHER, outside max_apps
        # An app without a record for this many intervals gives its slot back.
        self._idle_intervals = max(1, math.ceil(slots.reclaim_after_s / interval_s))
        self._random = rand
        self.load_factor = 1.0
        self._pool = self._per_interval  # nothing known yet: first come, first served
        self._apps: dict[str, _App] = {}  # at most max_apps (and the pinned), then OTHER
        self._unpinned = 0

    def set_texts_per_s(self, texts_per_s: float, interval_s: float, *, now: bool = False) -> None:
        """The budget (`CpuBudget.texts_per_s`): shared out from the next interval on, and
        what is left of this one no more than it allows (a first measurement lowering the
        guess must not let the guess's interval through); `now`: a whole interval's worth
        from now on (the embedder timed at start: nothing was taken before)."""
        self._per_interval = per_interval = texts_per_s * interval_s
        self._pool = per_interval if now else min(self._pool, per_interval)
        for counts in self._apps.values():
            counts.share = min(counts.share, per_interval)

    def rate(self, app: str) -> float:
        """The configured rate for `app`, before the load factor."""
        return self._app_rates.get(app, self._rate)

    def _app(self, app: str) -> _App:
        if app not in self._pinned:
            if self._unpinned >= self._max_apps:
                app = OTHER
                if app in self._apps:
                    return self._apps[app]
            self._unpinned += 1
        counts = self._apps[app] = _App(self.rate(app))
        return counts

    def admit(self, app: str, texts: int, *, error: bool) -> bool:
        """Whether a record of `app` with `texts` texts to embed is sampled."""
        counts = self._apps.get(app) or self._app(app)
        counts.offered += 1
        if not error:
            rate = counts.rate * self.load_factor
            if rate < 1.0 and (rate <= 0.0 or self._random() >= rate):
                return False
            counts.wanted += texts
            share = counts.share
            if share <= 0.0 and self._pool <= 0.0:
                return False
            from_share = min(share, texts)
            counts.share = share - from_share
            self._pool -= texts - from_share  # may dip below 0 by one record's texts
        counts.accepted += 1
        return True

    def tick(self, *, behind: bool, keeping_up: bool) -> dict[str, float]:
        """End of an interval: halve the load factor while the embedder is `behind`, recover by
        a quarter while it is `keeping_up`, share the next interval's budget by this one's
        demand, and return each app's share of records really sampled in this interval,
        errors included (for an app with no record in it, the share it would have had)."""
        effective = {
            app: c.accepted / c.offered if c.offered else c.rate * self.load_factor
            for app, c in self._apps.items()
        }
        if behind:
            self.load_factor = max(self.load_factor / 2, 0.001)
        elif keeping_up:
            self.load_factor = min(self.load_factor * 1.25, 1.0)
        shares = fair_shares({app: c.wanted for app, c in self._apps.items()}, self._per_interval)
        self._pool = self._per_interval - sum(shares.values())
        for app, counts in list(self._apps.items()):
            counts.idle_intervals = 0 if counts.offered else counts.idle_intervals + 1
            if counts.idle_intervals >= self._idle_intervals and app not in self._pinned:
                # Gone quiet: its slot goes back, so apps flooded in once do not keep it.
                del self._apps[app]
                self._unpinned -= 1
                continue
            counts.share = shares[app]
            counts.offered = counts.wanted = counts.accepted = 0
        return effective
