"""Configuration: one YAML file, `LOOKOUT_` environment overrides, secrets as SecretStr.

Precedence, highest first: environment (`LOOKOUT_BUS__URL`), the YAML file, defaults.
Secret values may come from the environment, `${VAR}` in the YAML, `${file:/path}` or
`${cred:NAME}` (a file in systemd's `$CREDENTIALS_DIRECTORY`, see `LoadCredential=`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lookout.alerts.rules import RULE_LABELS, RULE_SERIES
from lookout.durations import parse_duration_s
from lookout.errors import ConfigError

DurationS = Annotated[float, BeforeValidator(parse_duration_s), Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusConfig(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    topics: list[str] = Field(default_factory=lambda: ["llm/records/#"], min_length=1)
    qos: Literal[0, 1] = 1
    client_id: str = "lookout"
    shared_group: str | None = None
    persistent_session: bool = True
    embedded: bool = False
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    session_expiry_s: DurationS = 7 * 86400.0
    keepalive_s: int = Field(default=30, ge=5)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    queue_size: int = Field(default=10_000, ge=10)
    queue_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    reconnect_min_s: DurationS = 0.5
    reconnect_max_s: DurationS = 30.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("bus.url must start with mqtt:// or mqtts://")
        if not parsed.hostname:
            raise ValueError("bus.url needs a host, e.g. mqtt://127.0.0.1:1883")
        return v

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (8883 if self.tls else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme in ("mqtts", "ssl")


def default_store_url() -> str:
    """`/var/lib/lookout` where we may write there (root, or systemd's StateDirectory)."""
    state_dir = os.environ.get("STATE_DIRECTORY")
    if state_dir:
        return f"sqlite:///{Path(state_dir.split(':')[0]) / 'lookout.db'}"
    system = Path("/var/lib/lookout")
    if os.access(system, os.W_OK) or (not system.exists() and os.access(system.parent, os.W_OK)):
        return f"sqlite:///{system / 'lookout.db'}"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(xdg) / 'lookout' / 'lookout.db'}"


class StoreConfig(_Section):
    url: str = Field(default_factory=default_store_url)
    record_sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    retention: DurationS = 7 * 86400.0
    rejected_keep: int = Field(default=10_000, ge=0)
    rejected_sample_bytes: int = Field(default=4096, ge=64)
    queue_size: int = Field(default=50_000, ge=100)
    buffer_bytes: int = Field(default=8 * 1024 * 1024, ge=1024 * 1024)
    flush_interval_s: DurationS = 1.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith(("postgresql://", "postgres://"))):
            raise ValueError("store.url must be sqlite:///PATH or postgresql://...")
        return v


class ApiConfig(_Section):
    bind: str = "127.0.0.1:8321"
    token: SecretStr | None = None
    external_url: str | None = None

    @property
    def host(self) -> str:
        host = self.bind.rsplit(":", 1)[0]
        return host.strip("[]") or "0.0.0.0"  # noqa: S104

    @property
    def port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiConfig:
        if ":" not in self.bind or not self.bind.rsplit(":", 1)[1].isdigit():
            raise ValueError("api.bind must be HOST:PORT, e.g. 127.0.0.1:8321")
        if not self.loopback and self.token is None:
            raise ValueError(
                f"api.token is required when api.bind ({self.bind}) is not a loopback address"
            )
        return self


class Price(_Section):
    input: float = Field(ge=0)
    output: float = Field(ge=0)


class MetricsConfig(_Section):
    max_apps: int = Field(default=50, ge=1)
    max_models: int = Field(default=50, ge=1)
    bucket_s: DurationS = 10.0
    max_window: DurationS = 3600.0
    default_window: DurationS = 300.0
    dedupe_ids: int = Field(default=100_000, ge=0)
    max_metadata_bytes: int = Field(default=16_384, ge=0)
    max_text_chars: int = Field(default=200_000, ge=1)


class EmbedderConfig(_Section):
    # static: packaged, distilled from all-MiniLM-L6-v2, no download (bench/ood.py chose it)
    kind: Literal["static", "hashing", "sentence-transformers", "langchain"] = "static"
    model: str | None = None  # sentence-transformers name or path; static: a model directory
    spec: str | None = None  # langchain: init_embeddings spec, e.g. openai:text-embedding-3-small
    base_url: str | None = None  # langchain: an OpenAI-compatible endpoint
    api_key: SecretStr | None = None
    dim: int = Field(default=512, ge=16)  # hashing
    # sentence-transformers: pool the mean of the last N layers (2 ranks out-of-scope texts
    # best on CLINC150's validation split; 1 is the model's own sentence embedding)
    layers: int = Field(default=2, ge=1)
    # sentence-transformers: torch's threads (null: torch's default, one per core); 1 leaves
    # the other cores to ingest and the API (bench/ingest.py --embedder)
    threads: int | None = Field(default=1, ge=1)


class ReferenceConfig(_Section):
    auto_size: int = Field(default=1000, ge=10)


class DriftConfig(_Section):
    window: int = Field(default=200, ge=5)
    ert: float = Field(default=10_000, gt=1)


class OodConfig(_Section):
    fpr: float = Field(default=0.01, gt=0, lt=1)
    # Publish each flagged record's id and score here ({app} and {field} are filled in);
    # never its text.
    output_topic: str | None = None


_FIELDS: list[Literal["prompt", "response"]] = ["prompt", "response"]


class DetectorsConfig(_Section):
    enabled: bool = True
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    # Per app, instead of sample_rate: {app: share}
    sample_rates: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)
    fields: list[Literal["prompt", "response"]] = Field(default_factory=_FIELDS.copy)
    embedder: EmbedderConfig = EmbedderConfig()
    reference: ReferenceConfig = ReferenceConfig()
    drift: DriftConfig = DriftConfig()
    ood: OodConfig = OodConfig()
    queue_size: int = Field(default=10_000, ge=100)
    # A CPU budget: at most this many texts embedded a second, whatever the traffic (~1/8 of
    # a core with the static embedder); sample_rate applies within it.
    max_texts_per_s: float = Field(default=1000.0, gt=0)
    # Drift windows and OOD counts are saved on stop and this often while running, so a crash
    # loses at most this much of them.
    checkpoint_interval: DurationS = 60.0

    @model_validator(mode="after")
    def _enough_reference(self) -> DetectorsConfig:
        if self.reference.auto_size < 4 * self.drift.window:
            raise ValueError(
                f"reference.auto_size ({self.reference.auto_size}) must be at least 4 x "
                f"drift.window ({4 * self.drift.window}): half calibrates the threshold"
            )
        return self


class JudgeSchedule(_Section):
    """Exactly one of `interval` (a duration) and `cron` (five crontab fields, local time)."""

    interval: DurationS | None = None
    cron: str | None = None

    @model_validator(mode="after")
    def _one(self) -> JudgeSchedule:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of `interval` and `cron`")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"cron {self.cron!r}: {exc}") from exc
        return self


class JudgeConfig(_Section):
    enabled: bool = False
    model: str | None = None  # init_chat_model spec, e.g. openai:gpt-4o-mini
    base_url: str | None = None  # an OpenAI-compatible server
    api_key: SecretStr | None = None
    schedule: JudgeSchedule = JudgeSchedule(interval=900.0)
    sample_size: int = Field(default=20, ge=1, le=10_000)  # per app and run
    criteria: list[str] = Field(default_factory=lambda: ["helpfulness", "harmfulness"])
    custom_criteria: dict[str, str] = Field(default_factory=dict)
    max_tokens_per_day: int = Field(default=200_000, ge=0)  # UTC days; input + output
    # Which stored records a run samples from.
    lookback: DurationS = 24 * 3600.0
    apps: list[str] = Field(default_factory=list)  # empty: every app
    models: list[str] = Field(default_factory=list)
    statuses: list[Literal["ok", "error"]] = ["ok"]  # pydantic copies the default
    ood_first: bool = False  # records flagged out-of-distribution before the rest
    seed: str = "lookout"  # the deterministic sample's seed
    reference_key: str = "reference"  # a record's metadata key holding a reference answer
    anchors: str | None = None  # JSONL of records with expected verdicts, re-judged each run
    max_concurrency: int = Field(default=4, ge=1, le=64)
    timeout_s: DurationS = 60.0
    attempts: int = Field(default=3, ge=1, le=10)
    max_chars: int = Field(default=4000, ge=100)  # per text sent, after redaction

    @model_validator(mode="after")
    def _usable(self) -> JudgeConfig:
        from lookout.detectors.errors import DetectorError
        from lookout.detectors.judge import criteria_from

        try:
            criteria_from(self.criteria, self.custom_criteria)
        except DetectorError as exc:
            raise ValueError(str(exc)) from exc
        if self.enabled and not self.model:
            raise ValueError("an enabled judge needs `model` (an init_chat_model spec)")
        return self


class RedactionConfig(_Section):
    """PII redaction before text leaves the box (the judge's calls), beside the built-in kinds
    (emails, phone numbers, card numbers, IBANs, IP addresses, API keys, bearer tokens)."""

    patterns: dict[str, str] = Field(default_factory=dict)  # name: regular expression

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r}: {exc}") from exc
        return patterns


class ChannelConfig(_Section):
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


class RuleConfig(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    metric: str
    where: dict[str, str] = Field(default_factory=dict)
    window: DurationS = 300.0
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    for_s: DurationS | None = Field(default=None, alias="for")
    keep_firing_for: DurationS | None = None
    repeat_interval: DurationS = 4 * 3600.0
    no_data: Literal["ok", "keep", "alert"] = "ok"
    min_samples: int = Field(default=1, ge=1)
    severity: Literal["info", "warning", "critical"] = "warning"
    channels: list[str] = Field(default_factory=list)
    group_by: list[str] = Field(default_factory=lambda: ["app"])
    summary: str = ""
    description: str = ""

    @model_validator(mode="after")
    def _known_names(self) -> RuleConfig:
        if self.metric not in RULE_SERIES:
            known = ", ".join(sorted(RULE_SERIES))
            raise ValueError(f"rule {self.name!r}: unknown metric {self.metric!r} (known: {known})")
        for label in [*self.where, *self.group_by]:
            if label not in RULE_LABELS:
                known = ", ".join(sorted(RULE_LABELS))
                raise ValueError(f"rule {self.name!r}: unknown label {label!r} (known: {known})")
        return self


def _default_prices() -> dict[str, Price]:
    return {"gpt-4o-mini": Price(input=0.00015, output=0.0006)}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LOOKOUT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    bus: BusConfig = BusConfig()
    store: StoreConfig = Field(default_factory=StoreConfig)
    api: ApiConfig = ApiConfig()
    eval_interval: DurationS = 10.0
    prices: dict[str, Price] = Field(default_factory=_default_prices)
    metrics: MetricsConfig = MetricsConfig()
    detectors: DetectorsConfig = DetectorsConfig()
    judge: JudgeConfig = JudgeConfig()
    redaction: RedactionConfig = RedactionConfig()
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)
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
        return self


_VAR = re.compile(r"\$\{([^}]+)\}")


def _expand(value: str, path: str) -> str:
    def repl(match: re.Match[str]) -> str:
        ref = match.group(1)
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

    return _VAR.sub(repl, value)


def _read_secret_file(file: Path, path: str) -> str:
    try:
        return file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read secret file {file}: {exc.strerror}") from exc


def _expand_tree(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _expand_tree(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_tree(v, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        return _expand(node, path)
    return node


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        else:
            lines.append(f"{loc}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(path: str | Path | None = None) -> Settings:
    """Load the YAML file at `path` (or `$LOOKOUT_CONFIG`), or defaults when there is none."""
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
        data = _expand_tree(raw)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from exc


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration with every secret shown as `**********`."""
    dumped: dict[str, Any] = settings.model_dump(mode="json", by_alias=True)
    return dumped
