"""The service's own sections: the bus, the store, the API, the windowed metrics, prices."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator, model_validator

from lookout.durations import DurationS
from lookout.monitor.config.base import Section


class BusConfig(Section):
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


class StoreConfig(Section):
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


class ApiConfig(Section):
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
