"""One scope's service series over one window, as the windows (windows.py) compute them."""

from __future__ import annotations

from dataclasses import dataclass

from lookout.series import SERIES_NAMES, SeriesPoint


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One scope's series over one window. Quantiles and ratios are None without data."""

    app: str
    model: str
    count: int
    errors: int
    qps: float
    tps: float
    error_rate: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    ttft_p95: float | None
    gen_tps_p50: float | None
    tokens_per_request: float | None
    cost_per_hour: float

    def series(self) -> dict[str, float | None]:
        """Every series of the catalogue's SERIES_NAMES, by name."""
        return {name: getattr(self, name) for name in SERIES_NAMES}

    def points(self) -> list[SeriesPoint]:
        """The series as points labelled with this scope, as alert rules read them."""
        labels = (("app", self.app), ("model", self.model))
        return [
            SeriesPoint(name, labels, value, self.count) for name, value in self.series().items()
        ]
