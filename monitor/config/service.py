"""The service's own sections: the bus, the store, the API, the windowed metrics, prices."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from lookout.durations import DurationS
from lookout.monitor.config.base import Section


class BusConfig(Section):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    topics: list[str] = Field(default_factory=lambda: ["llm/records/#"], min_length=1)
    # Users' feedback on records (docs/wire-format.md); [] subscribes to none.
    feedback_topics: list[str] = Field(default_factory=lambda: ["llm/feedback/#"])
    qos: Literal[0, 1] = 1
    client_id: str | None = None  # default: see node.mqtt_client_id
    shared_group: str | None = None
    persistent_session: bool = True
    embedded: bool = False
    protocol: Literal["3.1.1", "5"] = "5"
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
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

    @model_validator(mode="before")
    @classmethod
    def _credentials_from_url(cls, data: Any) -> Any:
        """`mqtt://user:PASS@host` is used, not ignored: the user and password move to
        `username` and `password` (a secret) and the URL keeps only the address."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        parts = urlsplit(data["url"])
        if "@" not in parts.netloc:
            return data
        userinfo, host = parts.netloc.rsplit("@", 1)
        user, has_password, password = (unquote(p) for p in userinfo.partition(":"))
        data = {**data, "url": urlunsplit(parts._replace(netloc=host))}
        for key, value in (("username", user), ("password", password if has_password else "")):
            if not value:
                continue
            given = data.get(key)
            if given is not None and _plain(given) != value:
                raise ValueError(f"bus.url and bus.{key} give different values: give it once")
            data[key] = value
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parsed.hostname:
            raise ValueError("needs a host, e.g. mqtt://127.0.0.1:1883")
        try:
            port = parsed.port
        except ValueError:  # urllib: "Port out of range 0-65535" or not a number
            port = 0
        if port == 0 or (port is None and parsed.netloc.endswith(":")):
            raise ValueError(f"{v} has an invalid port: a port is 1-65535")
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


def _plain(value: object) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


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


class StoreConfig(Section):
    url: str = Field(default_factory=default_store_url)
    record_sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    retention: DurationS = 7 * 86400.0
    rejected_keep: int = Field(default=10_000, ge=0)
    rejected_sample_bytes: int = Field(default=4096, ge=64)
    queue_size: int = Field(default=50_000, ge=100)
    buffer_bytes: int = Field(default=8 * 1024 * 1024, ge=1024 * 1024)
    queue_hard_limit: int = Field(default=200_000, ge=100)
    flush_interval_s: DurationS = 0.05
    commit_rows: int = Field(default=5_000, ge=1)
    # PostgreSQL only: connections at most (the committer holds one while it writes; reads,
    # the API and the dashboard take the others), and how long to wait for one.
    pool_size: int = Field(default=4, ge=2, le=100)
    connect_timeout_s: DurationS = 10.0
    # With the store on PostgreSQL, where this node keeps what is not there yet (the outbox
    # and silences, references, judge runs, alert checkpoints): a SQLite file of its own.
    local_url: str = Field(default_factory=default_store_url)

    @model_validator(mode="after")
    def _hard_limit_above_soft(self) -> StoreConfig:
        if self.queue_hard_limit < self.queue_size:
            raise ValueError("store.queue_hard_limit must be at least store.queue_size")
        return self

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith(("postgresql://", "postgres://"))):
            raise ValueError("must be sqlite:///PATH or postgresql://...")
        return v

    @field_validator("local_url")
    @classmethod
    def _check_local_url(cls, v: str) -> str:
        if not v.startswith("sqlite:///"):
            raise ValueError("must be sqlite:///PATH")
        return v

    def local_path(self) -> Path:
        """The SQLite file of the state that lives beside the store: the store's own file,
        or `local_url`'s when the store is on PostgreSQL."""
        url = self.url if self.url.startswith("sqlite:///") else self.local_url
        return Path("/" + url.removeprefix("sqlite://").lstrip("/"))


MIN_TOKEN_CHARS = 16


class ApiConfig(Section):
    bind: str = "127.0.0.1:8321"
    token: SecretStr | None = None
    external_url: str | None = None
    # Host names (besides the bind address and loopback) that requests may name in `Host`,
    # e.g. the name a reverse proxy forwards: anything else is refused (DNS rebinding).
    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("token")
    @classmethod
    def _check_token(cls, v: SecretStr | None) -> SecretStr | None:
        # An empty `${VAR}`, `LOOKOUT_API__TOKEN=` or credential file must not turn
        # authentication off: refuse it, as a token anyone could guess.
        if v is not None and len(v.get_secret_value().strip()) < MIN_TOKEN_CHARS:
            size = len(v.get_secret_value().strip())
            what = "empty" if size == 0 else f"{size} characters long"
            raise ValueError(
                f"api.token is {what}; it must be at least {MIN_TOKEN_CHARS} characters"
                " (e.g. `openssl rand -hex 24`), or unset (null) for no token on loopback"
            )
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _lower_hosts(cls, v: list[str]) -> list[str]:
        return [h.strip().strip("[]").lower() for h in v if h.strip()]

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
        if self.port > 65535:  # the TCP port range; 0 picks a free port
            raise ValueError(f"api.bind has an invalid port; a port is 0-65535 ({self.bind})")
        if not self.loopback and self.token is None:
            raise ValueError(
                f"api.token is required when api.bind ({self.bind}) is not a loopback address"
            )
        return self


class Price(Section):
    input: float = Field(ge=0)
    output: float = Field(ge=0)


class MetricsConfig(Section):
    max_apps: int = Field(default=50, ge=1)
    max_models: int = Field(default=50, ge=1)
    bucket_s: DurationS = 10.0
    max_window: DurationS = 3600.0
    default_window: DurationS = 300.0
    dedupe_ids: int = Field(default=100_000, ge=0)
    max_metadata_bytes: int = Field(default=16_384, ge=0)
    max_text_chars: int = Field(default=200_000, ge=1)
    max_records_per_message: int = Field(default=1_000, ge=1)
    pinned_apps: list[str] = Field(default_factory=list)
    reclaim_after: DurationS = 900.0

    @field_validator("bucket_s")
    @classmethod
    def _bucket_divides_a_minute(cls, value: float) -> float:
        # Each bucket's records are committed into one stored minute (docs/deploy.md).
        per_minute = 60.0 / value if value > 0 else 0.0
        if value <= 0 or abs(per_minute - round(per_minute)) > 1e-9:
            raise ValueError(
                f"bucket_s must divide a minute (1, 2, 5, 10, 15, 30, 60 s), not {value}"
            )
        return value
