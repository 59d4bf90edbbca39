"""The OTLP/HTTP receiver's section: where it listens, who may send, how spans become records."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator

from lookout.durations import DurationS
from lookout.monitor.config.base import Section
from lookout.monitor.config.service import MIN_TOKEN_CHARS, ApiConfig


class OtlpConfig(Section):
    # Off by default: turning it on opens a second port, as an operator should decide.
    enabled: bool = False
    bind: str = "127.0.0.1:4318"
    # Exporters send it as `Authorization: Bearer ...`; when unset, api.token applies. Either is
    # required off loopback, as for the API.
    token: SecretStr | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    # The resource attribute that names a span's app; `unknown_service...` counts as none.
    app_attribute: str = "service.name"
    # Of a request body, compressed or not, and of what a gzip body inflates to.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # A span without its own prompt or response, from an app that sends them as log records,
    # waits this long for those records before it is counted without them.
    log_wait_s: DurationS = 2.0
    log_buffer_records: int = Field(default=10_000, ge=0)
    log_ttl_s: DurationS = 30.0

    @field_validator("token")
    @classmethod
    def _check_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"otlp.token must be at least {MIN_TOKEN_CHARS} characters, or unset (null)"
            )
        return v

    def api_view(self, api_token: SecretStr | None) -> ApiConfig:
        """The receiver as the API's guards see a server: its bind, token and host names.
        Not validated again: the token rule is checked by `Settings` with otlp's own names."""
        return ApiConfig.model_construct(
            bind=self.bind,
            token=self.token or api_token,
            allowed_hosts=[h.strip().strip("[]").lower() for h in self.allowed_hosts if h.strip()],
            external_url=None,
        )

    @model_validator(mode="after")
    def _check_bind(self) -> OtlpConfig:
        if ":" not in self.bind or not self.bind.rsplit(":", 1)[1].isdigit():
            raise ValueError("otlp.bind must be HOST:PORT, e.g. 127.0.0.1:4318")
        if int(self.bind.rsplit(":", 1)[1]) > 65535:
            raise ValueError(f"otlp.bind has an invalid port; a port is 0-65535 ({self.bind})")
        return self
