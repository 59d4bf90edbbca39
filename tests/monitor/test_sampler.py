"""The detectors' sampler: rates per app, a fair share of the CPU budget, the load factor."""

from __future__ import annotations

import random

import pytest

from lookout.monitor.detection.sampler import AppSlots, Sampler, fair_shares
from lookout.series import OTHER


def test_fair_shares_give_small_demands_in_full_and_split_the_rest() -> None:
    assert fair_shares({"a": 10, "b": 1000, "c": 1000}, 100) == {"a": 10, "b": 45, "c": 45}
    assert fair_shares({"a": 10, "b": 20}, 100) == {"a": 10, "b": 20}
    assert fair_shares({}, 100) == {}


def sampler(**overrides: object) -> Sampler:
    args: dict[str, object] = {
        "rate": 1.0,
        "app_rates": {},
        "texts_per_s": 100.0,
        "interval_s": 1.0,
    } | overrides
    args["slots"] = AppSlots(max_apps=args.pop("max_apps", 3))  # type: ignore[arg-type]
    return Sampler(**args)  # type: ignore[arg-type]


def test_rates_per_app_and_errors_always() -> None:
    s = sampler(
        rate=0.25,
        app_rates={"audit": 1.0, "noisy": 0.0},
        texts_per_s=1e9,
        rand=random.Random(0).random,
    )
    taken = {
        app: sum(s.admit(app, 1, error=False) for _ in range(4000))
        for app in ("web", "audit", "noisy")
    }
    assert taken["audit"] == 4000 and taken["noisy"] == 0
    assert taken["web"] == pytest.approx(1000, rel=0.1)
    assert s.admit("noisy", 1, error=True)  # an error is always looked at
    rates = s.tick(behind=False, keeping_up=True)
    assert rates["audit"] == 1.0 and rates["web"] == pytest.approx(0.25, rel=0.1)
    assert rates["noisy"] == pytest.approx(1 / 4001)


def test_the_load_factor_halves_while_behind_and_recovers() -> None:
    s = sampler()
    s.admit("web", 1, error=False)
    s.tick(behind=True, keeping_up=False)
    s.tick(behind=True, keeping_up=False)
    assert s.load_factor == 0.25
    # An app with no record in an interval reports the rate it would have had.
    assert s.tick(behind=False, keeping_up=False) == {"web": 0.25}
    for _ in range(10):
        rates = s.tick(behind=False, keeping_up=True)
    assert s.load_factor == 1.0 and rates == {"web": 1.0}


def test_apps_beyond_the_cap_are_counted_together() -> None:
    s = sampler(max_apps=2, texts_per_s=1e9)
    for app in ("a", "b", "c", "d", "e"):
        s.admit(app, 1, error=False)
    assert set(s.tick(behind=False, keeping_up=True)) == {"a", "b", OTHER}
