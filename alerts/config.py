"""The alerting sections of the configuration: notification channels and alert rules.

`lookout.monitor.config.Settings` composes them (`channels:` and `rules:`) and checks that each
rule names a configured channel.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from lookout.alerts.rules import RULE_LABELS, RULE_SERIES
from lookout.detectors.anomaly import Direction, threshold_for
from lookout.durations import DurationOrZeroS, DurationS
from lookout.series import SERIES_NAMES

DEFAULT_FALSE_ALARMS_PER_WEEK = 1.0


class ChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slack", "webhook"]
    # slack: an incoming-webhook URL, or a bot token and a channel (chat.postMessage)
    webhook_url: SecretStr | None = None
    token: SecretStr | None = None
    channel: str | None = None
    api_url: str = "https://slack.com/api/"
    min_interval: DurationS = 1.0  # slack: at most one message per this, per channel
    # webhook
    url: str | None = None
    secret: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: DurationS = 10.0
    max_age: DurationS = 24 * 3600.0  # undelivered past this: expired, counted, logged

    @model_validator(mode="after")
    def _complete(self) -> ChannelConfig:
        if self.kind == "webhook" and not self.url:
            raise ValueError("a webhook channel needs `url`")
        if self.kind == "slack" and not self.webhook_url and not (self.token and self.channel):
            raise ValueError("a slack channel needs `webhook_url`, or `token` and `channel`")
        return self


class RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    metric: str
    where: dict[str, str] = Field(default_factory=dict)
    window: DurationS = 300.0
    op: Literal[">", ">=", "<", "<=", "anomaly"] = ">"
    threshold: float | None = None  # required by the comparison ops
    # op: anomaly (docs/detectors.md): which way counts, how rare a false alarm should be
    # (or `sensitivity`, the robust z beyond which a value is anomalous), which seasonal
    # profile (auto: the daily or weekly one once it predicts the series better)
    direction: Literal["up", "down", "both"] = "both"
    sensitivity: float | None = Field(default=None, gt=0)
    false_alarms_per_week: float | None = Field(default=None, gt=0)
    seasonality: Literal["auto", "none", "daily", "weekly"] = "auto"
    # The shape score beside the robust z (docs/detectors.md): +2-3 NAB points for ~2.3x the
    # detector's CPU per learned minute (tens of microseconds); false: the robust z alone.
    # Unset: true for an anomaly rule, None (meaningless) for the others.
    shape: bool | None = None
    # 0 (or absent): no pending state, a breach fires at the first evaluation, as in Prometheus.
    for_s: DurationOrZeroS | None = Field(default=None, alias="for")
    keep_firing_for: DurationOrZeroS | None = None
    repeat_interval: DurationS = 4 * 3600.0
    no_data: Literal["ok", "keep", "alert"] = "ok"
    min_samples: int = Field(default=1, ge=1)
    severity: Literal["info", "warning", "critical"] = "warning"
    channels: list[str] = Field(default_factory=list)
    group_by: list[str] = Field(default_factory=lambda: ["app"])
    summary: str = ""
    # The text of the resolution: {value}, {threshold}, labels and {back} (under, over or at the
    # threshold), e.g. "p95 latency {value:.1f}s, back {back} {threshold:g}s ({app})".
    resolved_summary: str = ""
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _shape_on_for_anomaly(cls, data: Any) -> Any:
        # Written out rather than implied, so the effective config (`lookout check-config`)
        # shows that an anomaly rule scores the shape.
        if isinstance(data, dict) and data.get("op") == "anomaly" and data.get("shape") is None:
            return {**data, "shape": True}
        return data

    @model_validator(mode="after")
    def _known_names(self) -> RuleConfig:
        if self.metric not in RULE_SERIES:
            known = ", ".join(sorted(RULE_SERIES))
            raise ValueError(f"rule {self.name!r}: unknown metric {self.metric!r} (known: {known})")
        for label in [*self.where, *self.group_by]:
            if label not in RULE_LABELS:
                known = ", ".join(sorted(RULE_LABELS))
                raise ValueError(f"rule {self.name!r}: unknown label {label!r} (known: {known})")
        if self.op == "anomaly":
            if self.metric not in SERIES_NAMES:
                known = ", ".join(SERIES_NAMES)
                raise ValueError(f"rule {self.name!r}: op anomaly watches one of {known}")
            if self.sensitivity is not None and self.false_alarms_per_week is not None:
                raise ValueError(
                    f"rule {self.name!r}: `sensitivity` or `false_alarms_per_week`, not both"
                )
        elif self.threshold is None:
            raise ValueError(f"rule {self.name!r}: op {self.op!r} needs `threshold`")
        elif self.shape:
            raise ValueError(f"rule {self.name!r}: `shape` is for op anomaly")
        return self

    @property
    def anomaly_z(self) -> float:
        """The robust z beyond which an anomaly rule's value is anomalous: `sensitivity`, or
        the z for `false_alarms_per_week` over one decision per window (at least a minute)."""
        if self.sensitivity is not None:
            return self.sensitivity
        rate = self.false_alarms_per_week or DEFAULT_FALSE_ALARMS_PER_WEEK
        return threshold_for(rate, max(self.window, 60.0), Direction(self.direction))


class SilencesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The longest a silence may last (API and CLI): a forgotten one must end on its own.
    max_duration: DurationS = 90 * 86400.0
