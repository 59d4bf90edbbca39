"""The detectors' sampler: rates per app, a fair share of the CPU budget, the load factor."""

from __future__ import annotations

import random

import pytest

from lookout.monitor.detection.sampler import AppSlots, CpuBudget, Sampler, fair_shares
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


def test_the_cpu_budget_turns_a_share_of_a_core_into_texts_a_second() -> None:
    budget = CpuBudget(cpu_share=0.15, max_texts_per_s=1000)
    assert budget.texts_per_s() == pytest.approx(75)  # until measured: a cautious 2 ms a text
    budget.observe(0.030, 3)  # the first batch, however small, replaces the guess
    assert budget.measured and budget.cost_per_text_s == pytest.approx(0.010)
    assert budget.texts_per_s() == pytest.approx(15.0)  # 0.15 core / 10 ms: an ONNX-like embedder
    budget.observe(0.0001, 10)  # then too few texts to judge yet
    assert budget.cost_per_text_s == pytest.approx(0.010)
    budget.observe(22 * 0.0001, 22)  # a cheap text's cost moves the estimate, not all at once
    assert 0.006 < budget.cost_per_text_s < 0.008
    for _ in range(40):
        budget.observe(32 * 0.0001, 32)
    assert budget.texts_per_s() == 1000  # cheap again: the cap binds, not the share
    budget.observe(32 * 0.02, 32)  # dearer texts (longer ones) count at once
    assert budget.texts_per_s() == pytest.approx(7.5)


def test_a_lower_budget_holds_at_once_and_is_shared_from_the_next_interval_on() -> None:
    s = sampler(texts_per_s=100.0)
    s.set_texts_per_s(10.0, 1.0)  # this interval's 100 are cut to 10
    assert sum(s.admit("web", 1, error=False) for _ in range(50)) == 10
    s.tick(behind=False, keeping_up=True)
    assert sum(s.admit("web", 1, error=False) for _ in range(50)) == 10
