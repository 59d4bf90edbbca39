"""Configuration: one YAML file, `LOOKOUT_` environment overrides, secrets as SecretStr.

`Settings` composes one model per section: the daemon's own (`service`), the detectors'
(`detection`), the judge's and redaction (`judge`), and the alerting channels and rules, which
`lookout.alerts.config` owns. `load_settings` reads the file (see `settings` for precedence and
secret references); `masked_dump` shows the effective configuration.
"""

from __future__ import annotations

from lookout.alerts.config import ChannelConfig, RuleConfig
from lookout.monitor.config.detection import (
    DetectorsConfig,
    DriftConfig,
    EmbedderConfig,
    OodConfig,
    ReferenceConfig,
)
from lookout.monitor.config.engagement import EngagementConfig
from lookout.monitor.config.feedback import FeedbackConfig
from lookout.monitor.config.judge import JudgeConfig, JudgeSchedule, RedactionConfig
from lookout.monitor.config.masking import mask_url
from lookout.monitor.config.otlp import OtlpConfig
from lookout.monitor.config.service import (
    ApiConfig,
    BusConfig,
    MetricsConfig,
    Price,
    StoreConfig,
    default_store_url,
)
from lookout.monitor.config.settings import Settings, load_settings, masked_dump
from lookout.monitor.config.tools import ToolsConfig

__all__ = [
    "ApiConfig",
    "BusConfig",
    "ChannelConfig",
    "DetectorsConfig",
    "DriftConfig",
    "EmbedderConfig",
    "EngagementConfig",
    "FeedbackConfig",
    "JudgeConfig",
    "JudgeSchedule",
    "MetricsConfig",
    "OodConfig",
    "OtlpConfig",
    "Price",
    "RedactionConfig",
    "ReferenceConfig",
    "RuleConfig",
    "Settings",
    "StoreConfig",
    "ToolsConfig",
    "default_store_url",
    "load_settings",
    "mask_url",
    "masked_dump",
]
