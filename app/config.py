"""Settings, read from environment variables (and a .env file in the working directory)."""

import ipaddress
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "instructloop"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default_factory=default_data_dir, alias="INSTRUCTLOOP_DATA_DIR")
    """Artifacts, model caches, the embedded SQLite database and the generated secret key."""

    database_url: str = Field(default="", alias="DATABASE_URL")
    """SQLAlchemy URL; empty means a SQLite file in the data folder."""

    secret_key_value: str = Field(default="", alias="SECRET_KEY")
    """Signs session cookies; generated once and kept in the data folder when unset."""

    public_url: str = Field(default="", alias="INSTRUCTLOOP_PUBLIC_URL")
    """The address people open, e.g. https://label.example.com: invite and reset links start with it.
    Unset, a link starts with the admin's request address only when its host is trusted (a loopback
    name, or one in allowed_hosts); otherwise the page gives the bare path and asks for this setting,
    so a forged Host header never ends up in a link someone is sent."""

    allowed_hosts: str = Field(default="", alias="INSTRUCTLOOP_ALLOWED_HOSTS")
    """Comma-separated host names the server answers to (others get 400); empty: any."""

    trusted_proxies: str = Field(default="", alias="INSTRUCTLOOP_TRUSTED_PROXIES")
    """Comma-separated addresses or networks (e.g. 127.0.0.1, 10.0.0.0/8) of the reverse proxies in
    front: only a request from one of them has its X-Forwarded-For / X-Forwarded-Proto believed.
    Empty: never (the peer address is the client), even from loopback."""

    cookie_secure: bool = Field(default=False, alias="INSTRUCTLOOP_COOKIE_SECURE")
    """Send the session cookie only over HTTPS (turn on behind TLS)."""

    session_max_age_s: int = Field(default=14 * 24 * 3600, alias="INSTRUCTLOOP_SESSION_MAX_AGE")
    lease_seconds: int = Field(default=30 * 60, alias="INSTRUCTLOOP_LEASE_SECONDS")
    """Default time a labeler holds a task before its slot is freed (projects can override)."""

    login_max_failures: int = Field(default=5, alias="INSTRUCTLOOP_LOGIN_MAX_FAILURES")
    login_window_s: int = Field(default=15 * 60, alias="INSTRUCTLOOP_LOGIN_WINDOW")
    login_max_failures_per_ip: int = Field(default=20, alias="INSTRUCTLOOP_LOGIN_MAX_FAILURES_PER_IP")
    invite_ttl_s: int = Field(default=7 * 24 * 3600, alias="INSTRUCTLOOP_INVITE_TTL")
    reset_ttl_s: int = Field(default=3600, alias="INSTRUCTLOOP_RESET_TTL")
    """A password reset link is a password: it works for this long (an invite, which only makes a new
    account, lives invite_ttl_s)."""
    max_body_bytes: int = Field(default=10 * 1024 * 1024, alias="INSTRUCTLOOP_MAX_BODY_BYTES")
    """Requests with a larger body are refused with 413 before they are read."""

    intake_rate_per_minute: float = Field(default=600.0, alias="INSTRUCTLOOP_INTAKE_RATE")
    intake_burst: int = Field(default=100, alias="INSTRUCTLOOP_INTAKE_BURST")
    """The intake's rate limit per app token and server process: a token bucket that holds `burst`
    prompts and refills at `rate` per minute (a batch costs one per prompt); beyond it, 429."""

    admin_email: str = Field(default="admin@localhost", alias="INSTRUCTLOOP_ADMIN_EMAIL")
    admin_password: str = Field(default="", alias="INSTRUCTLOOP_ADMIN_PASSWORD")
    """Password of the first admin created on first start; printed once when unset."""

    default_model: str = Field(default="smollm2-135m-instruct", alias="INSTRUCTLOOP_DEFAULT_MODEL")
    """Model used when a run names none: a hub id, a local folder or the embedded default."""

    worker_heartbeat_s: float = Field(default=5.0, alias="INSTRUCTLOOP_WORKER_HEARTBEAT")
    worker_stale_s: float = Field(default=120.0, alias="INSTRUCTLOOP_WORKER_STALE")
    """A running run whose heartbeat is older than this is marked failed (its worker vanished)."""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        # A typo must stop the server at start, not silently trust nobody (or everybody).
        for item in value.split(","):
            if item.strip():
                ipaddress.ip_network(item.strip(), strict=False)
        return value

    @cached_property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'instructloop.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @cached_property
    def secret_key(self) -> str:
        if self.secret_key_value:
            return self.secret_key_value
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(48))
        return path.read_text().strip()

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


def get_settings() -> Settings:
    return Settings()
