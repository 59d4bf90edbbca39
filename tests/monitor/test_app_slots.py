"""App-name flooding: slots of apps gone quiet are reclaimed, pinned apps are never folded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookout.clock import FakeClock
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.detection.handoff import QueuedText
from lookout.monitor.detection.sampler import AppSlots, Sampler
from lookout.monitor.detection.tracks import TrackTable
from lookout.monitor.ingest.records import Record
from lookout.monitor.metrics.windows import WindowedMetrics
from lookout.series import OTHER

T0 = 1_700_000_000.0


def see(w: WindowedMetrics, app: str, now: float) -> tuple[str, str]:
    key = w.labels_for(app, "m")
    w.observe(key, now, False, 100.0, None, None, None, 0.0)
    return key


def test_a_flood_of_app_names_gives_its_slots_back_once_quiet() -> None:
    w = WindowedMetrics(max_apps=5, max_window_s=300, reclaim_after_s=600)
    for i in range(110):  # one message with 110 invented apps
        see(w, f"flood-{i}", T0)
    assert see(w, "real", T0 + 10)[0] == OTHER
    w.prune(T0 + 300)  # not idle long enough yet
    assert see(w, "real", T0 + 310)[0] == OTHER
    w.prune(T0 + 700)
    assert see(w, "real", T0 + 710) == ("real", "m")
    # One waiting app took one slot: the other flood names are still folded if they come back.
    assert see(w, "flood-1", T0 + 720)[0] in {"flood-1", OTHER}


def test_the_least_recently_seen_idle_app_is_reclaimed_first() -> None:
    w = WindowedMetrics(max_apps=3, max_window_s=300, reclaim_after_s=100)
    see(w, "old", T0)
    see(w, "older", T0 - 50)
    see(w, "busy", T0)
    see(w, "busy", T0 + 200)
    assert see(w, "new", T0 + 200)[0] == OTHER
    assert w.reclaim(T0 + 200) == ["older"]
    assert see(w, "new", T0 + 201) == ("new", "m")
    assert see(w, "old", T0 + 202) == ("old", "m")  # still holds its slot


def test_pinned_apps_are_never_folded() -> None:
    w = WindowedMetrics(max_apps=2, max_cells=4, pinned_apps=["support-bot"])
    for i in range(10):
        see(w, f"flood-{i}", T0)
    assert see(w, "support-bot", T0) == ("support-bot", "m")
    assert w.labels_for("support-bot", "other-model") == ("support-bot", "other-model")


def test_the_sampler_gives_quiet_apps_slots_back_and_keeps_pinned_ones() -> None:
    s = Sampler(
        rate=1.0,
        app_rates={},
        texts_per_s=1e9,
        interval_s=1.0,
        slots=AppSlots(max_apps=2, pinned=frozenset({"vip"}), reclaim_after_s=3.0),
    )
    for app in ("f1", "f2", "f3", "vip"):
        s.admit(app, 1, error=False)
    assert set(s.tick(behind=False, keeping_up=True)) == {"f1", "f2", OTHER, "vip"}
    for _ in range(3):
        s.admit("vip", 1, error=False)
        s.tick(behind=False, keeping_up=True)
    s.admit("real", 1, error=False)
    assert "real" in s.tick(behind=False, keeping_up=True)


def text(app: str, at: float) -> QueuedText:
    record = Record(None, at, app, "m", "ok", at, prompt="hello")
    return QueuedText(app, "prompt", "hello", at, record, None, 0.0)


def test_detector_tracks_of_quiet_apps_are_reclaimed_and_pinned_apps_always_get_one() -> None:
    table = TrackTable(
        buckets=10,
        slots=AppSlots(max_apps=3, pinned=frozenset({"vip"}), reclaim_after_s=600),
        reference_size=1000,
    )
    x = np.zeros((1, 4), dtype=np.float32)
    for i in range(3):
        table.process([text(f"flood-{i}", T0 + i)], x)
    table.process([text("real", T0 + 10)], x)
    assert table.get("real", "prompt") is None
    table.process([text("vip", T0 + 10)], x)
    assert table.get("vip", "prompt") is not None
    table.process([text("real", T0 + 700)], x)
    assert table.get("real", "prompt") is not None
    assert table.get("flood-0", "prompt") is None  # the least recently seen went first
    assert table.get("flood-1", "prompt") is not None


def test_reclaimed_apps_leave_metrics_and_the_app_taking_the_slot_appears(tmp_path: Path) -> None:
    # Prometheus label sets follow the slots: /metrics does not grow with every app that ever
    # held one.
    clock = FakeClock(T0)
    settings = Settings.model_validate(
        {
            "store": {"url": f"sqlite:///{tmp_path}/s.db"},
            "metrics": {"max_apps": 2, "reclaim_after": "100s", "max_window": "300s"},
        }
    )
    daemon = Daemon(settings, clock=clock)
    for app in ("a", "b"):
        daemon.pipeline.process_payload(b'{"latency_ms": 5}', f"llm/records/{app}", "mqtt", T0)
    clock.advance(200)
    daemon.pipeline.process_payload(b'{"latency_ms": 5}', "llm/records/c", "mqtt", clock.now())
    daemon.pipeline.process_payload(b'{"latency_ms": 5}', "llm/records/b", "mqtt", clock.now())

    def apps() -> set[str]:
        return {
            s.labels["app"]
            for family in daemon.registry.collect()
            if family.name == "lookout_records"
            for s in family.samples
        }

    assert apps() == {"a", "b", OTHER}
    daemon.windows.prune(clock.now())  # a is idle: its slot goes to c, waiting in `other`
    assert apps() == {"b", OTHER}
    daemon.pipeline.process_payload(b'{"latency_ms": 5}', "llm/records/c", "mqtt", clock.now())
    assert apps() == {"b", "c", OTHER}
