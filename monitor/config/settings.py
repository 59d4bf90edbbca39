"""The whole configuration: the sections together, loaded from YAML and the environment.

Precedence, highest first: environment (`LOOKOUT_BUS__URL`), the YAML file, defaults.
Secret values may come from the environment, `${VAR}` in the YAML, `${file:/path}` or
`${cred:NAME}` (a file in systemd's `$CREDENTIALS_DIRECTORY`, see `LoadCredential=`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lookout.alerts.config import ChannelConfig, RuleConfig, SilencesConfig
from lookout.durations import DurationS
from lookout.errors import ConfigError
from lookout.monitor.config.cluster import ClusterConfig
from lookout.monitor.config.detection import DetectorsConfig
from lookout.monitor.config.engagement import EngagementConfig
from lookout.monitor.config.feedback import FeedbackConfig
from lookout.monitor.config.judge import JudgeConfig, RedactionConfig
from lookout.monitor.config.masking import mask_tree
from lookout.monitor.config.messages import format_errors
from lookout.monitor.config.node import NodeConfig
from lookout.monitor.config.otlp import OtlpConfig
from lookout.monitor.config.service import (
    ApiConfig,
    BusConfig,
    MetricsConfig,
    Price,
    StoreConfig,
)
from lookout.monitor.config.tools import ToolsConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LOOKOUT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    node: NodeConfig = Field(default_factory=NodeConfig)
    cluster: ClusterConfig = ClusterConfig()
    bus: BusConfig = BusConfig()
    store: StoreConfig = Field(default_factory=StoreConfig)
    api: ApiConfig = ApiConfig()
    otlp: OtlpConfig = OtlpConfig()
    eval_interval: DurationS = 10.0
    # Overrides of genai-prices' table (per 1k tokens), and prices of models it does not know.
    prices: dict[str, Price] = Field(default_factory=dict)
    metrics: MetricsConfig = MetricsConfig()
    detectors: DetectorsConfig = DetectorsConfig()
    judge: JudgeConfig = JudgeConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    engagement: EngagementConfig = EngagementConfig()
    tools: ToolsConfig = ToolsConfig()
    redaction: RedactionConfig = RedactionConfig()
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)
    silences: SilencesConfig = SilencesConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        for rule in self.rules:
            for channel in rule.channels:
                if channel not in self.channels:
                    raise ValueError(f"rule {rule.name!r} names unknown channel {channel!r}")
        otlp = self.otlp
        tokenless = otlp.token is None and self.api.token is None
        if otlp.enabled and tokenless and not otlp.api_view(None).loopback:
            raise ValueError(
                f"otlp.token (or api.token) is required when otlp.bind ({otlp.bind}) is "
                "not a loopback address"
            )
        return self


_VAR = re.compile(r"\$\{([^}]+)\}")


def _expand(value: str, path: str, unset: list[str] | None) -> str:
    def repl(match: re.Match[str]) -> str:
        try:
            return _resolve(match.group(1), path)
        except ConfigError as exc:
            if unset is None:
                raise
            unset.append(str(exc))
            return match.group(0)  # left as written: a check without the secrets at hand

    return _VAR.sub(repl, value)


def _resolve(ref: str, path: str) -> str:
    if ref.startswith("file:"):
        return _read_secret_file(Path(ref[5:]), path)
    if ref.startswith("cred:"):
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(f"{path}: ${{{ref}}} needs $CREDENTIALS_DIRECTORY (systemd)")
        return _read_secret_file(Path(cred_dir) / ref[5:], path)
    if ref not in os.environ:
        raise ConfigError(f"{path}: environment variable {ref} is not set")
    return os.environ[ref]


def _read_secret_file(file: Path, path: str) -> str:
    try:
        return file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read secret file {file}: {exc.strerror}") from exc


def _expand_tree(node: Any, unset: list[str] | None, path: str = "") -> Any:
    if isinstance(node, dict):
        return {
            k: _expand_tree(v, unset, f"{path}.{k}" if path else str(k)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_tree(v, unset, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        return _expand(node, path, unset)
    return node


def load_settings(path: str | Path | None = None, *, unset: list[str] | None = None) -> Settings:
    """Load the YAML file at `path` (or `$LOOKOUT_CONFIG`), or defaults when there is none.

    A `${...}` reference that cannot be resolved (a variable not set, a secret file missing) is
    an error; with an `unset` list it is left as written and described in the list instead, for
    checking a config where the production secrets are not at hand.
    """
    if path is None:
        path = os.environ.get("LOOKOUT_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level")
        data = _expand_tree(raw, unset)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, Settings)) from exc


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration with every secret shown as `**********`: secret fields,
    header values and credentials in URLs."""
    dumped: dict[str, Any] = mask_tree(settings.model_dump(mode="json", by_alias=True))
    return dumped
