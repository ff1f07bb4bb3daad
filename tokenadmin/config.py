"""Settings, read from TOKENADMIN_* environment variables and an optional .env file.

Each setting's docstring is its description; docs/configuration.md documents each for
operators (tests/test_docs.py keeps the two in line)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOKENADMIN_", env_file=".env", extra="ignore", use_attribute_docstrings=True
    )

    database_url: str = "sqlite:///tokenadmin.db"
    """Database URL: a SQLite file (the default) or any postgresql:// URL."""
    host: str = "127.0.0.1"
    """Address `tokenadmin serve` listens on."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port `tokenadmin serve` listens on."""
    workers: int = Field(default=1, ge=1, le=64)
    """Server processes started by `tokenadmin serve`."""
    db_pool_size: int = Field(default=10, ge=1, le=200)
    """Database connections per process (PostgreSQL)."""
    log_level: str = "info"
    """Level of the server's log lines: debug, info, warning or error."""
    log_format: Literal["text", "json"] = "text"
    """How log lines are written: `text` for people, `json` (one object a line) for tools."""
    metrics_token: SecretStr | None = None
    """The bearer token a Prometheus scraper sends to GET /metrics; unset, /metrics answers
    404 (metrics off)."""
    idempotency_ttl_hours: int = Field(default=48, ge=24)
    """How long idempotency keys are kept, in hours (at least 24)."""
    reservation_ttl_seconds: int = Field(default=300, ge=1, le=86400)
    """Time to live of a reservation that names none."""
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    """How often the background jobs run (each once across all server processes): releasing
    expired reservations, expiring purchases, starting new periods, forgetting old keys."""
    job_intervals: dict[str, float] = Field(default_factory=dict)
    """Intervals of single jobs, in seconds, by job name (JSON), overriding
    `sweep_interval_seconds` for them."""
    job_lease_seconds: float = Field(default=30.0, gt=0)
    """How long a server process holds a job's lease without renewing it; another process
    takes the job over when it ends."""
    clock_file: Path | None = None
    """For tests of several server processes: a file holding the time the servers read
    (one ISO 8601 moment), instead of the system clock."""
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    """Largest request body accepted, in bytes."""

    upstream_base_url: str | None = None
    """The platform's default upstream: an OpenAI-compatible base URL (such as
    https://api.openai.com/v1) for the models whose model row and organization name none."""
    upstream_api_key: str | None = None
    """The key sent to the default upstream as a bearer token."""
    upstream_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    """How long the gateway waits for a model's upstream, in seconds: for its answer, and
    between two pieces of a streamed one."""
    gateway_max_tokens: int = Field(default=4096, ge=1, le=1_000_000)
    """Completion tokens the gateway reserves for a request that names no `max_tokens`, when
    its model names no `max_output_tokens`."""
    access_token_minutes: int = Field(default=60, ge=1, le=1440)
    """How long an access token of the Ask Sage API (`/user/get-token-with-api-key`) lasts,
    in minutes."""

    smtp_url: SecretStr | None = None
    """The SMTP server notification emails go through: smtp://[user:password@]host[:port],
    `?starttls=true` to upgrade the connection, or smtps://... for TLS from the start. Unset
    (or without `smtp_from`), no email is sent."""
    smtp_from: str | None = None
    """The From address of notification emails (with `smtp_url`)."""

    session_hours: int = Field(default=12, ge=1, le=720)
    """How long a dashboard sign-in lasts, in hours."""
    sign_in_attempts: int = Field(default=5, ge=1, le=100)
    """Failed sign-ins (per email, and per address) before each further attempt is slowed
    down."""

    @field_validator("job_intervals")
    @classmethod
    def _positive_intervals(cls, value: dict[str, float]) -> dict[str, float]:
        for name, seconds in value.items():
            if not seconds > 0:
                raise ValueError(f"job_intervals: {name} needs a number of seconds above 0")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme, _, rest = value.get_secret_value().partition("://")
            if scheme not in ("smtp", "smtps") or not rest.strip("/"):
                raise ValueError("smtp_url must be smtp://host[:port] or smtps://host[:port]")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be debug, info, warning or error")
        return value.lower()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        return Path(self.database_url.split("///", 1)[1])


@lru_cache
def get_settings() -> Settings:
    return Settings()
