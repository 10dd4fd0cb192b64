"""Service settings, read once from `SDFT_*` environment variables (or a `.env` file).

The API and the worker share this object, so a value set here means the same thing on both sides.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Connection strings, storage locations and service limits."""

    model_config = SettingsConfigDict(env_prefix="SDFT_", env_file=".env", extra="ignore")

    # Connections.
    database_url: SecretStr = SecretStr("postgresql+psycopg://postgres@127.0.0.1:5432/sdft")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    s3_endpoint_url: str = "http://127.0.0.1:8333"
    # Base URL put into presigned links when clients reach S3 under another address than the
    # service does (a public host name in front of a private endpoint). Empty means the same.
    s3_presign_endpoint_url: str | None = None
    s3_bucket: str = "sdft"
    s3_access_key_id: SecretStr = SecretStr("")
    s3_secret_access_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"

    # S3 folders that jobs may name as their model (`s3://bucket/prefix/`). A job's `model`
    # URI is read with the service's own credentials, so only these prefixes are accepted.
    # Empty (the default) turns s3:// models off. Set as a JSON list in the environment.
    s3_model_prefixes: list[str] = Field(default_factory=list)

    # Local folders.
    models_dir: Path = Path("models")
    cache_dir: Path = Path(".sdft/cache")

    # Limits.
    presign_expiry_s: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    max_upload_bytes: int = Field(default=4 * 1024**3, gt=0)
    max_request_bytes: int = Field(default=1024**2, gt=0)
    max_jobs_in_flight_per_tenant: int = Field(default=4, gt=0)
    rate_limit_per_minute: int = Field(default=600, gt=0)
    job_time_limit_s: int = Field(default=48 * 3600, gt=0)

    # Database connections per process. The API admits at most pool size + overflow requests
    # that use the database at once (see api.limits.ConcurrencyLimit).
    db_pool_size: int = Field(default=10, gt=0)
    db_max_overflow: int = Field(default=20, ge=0)
    # Seconds a request may wait for one of those slots before it gets 503.
    request_queue_timeout_s: float = Field(default=30.0, gt=0)

    # Worker liveness.
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    heartbeat_stale_after_s: float = Field(default=120.0, gt=0)
    reaper_interval_s: float = Field(default=60.0, gt=0)
    metrics_batch_size: int = Field(default=10, gt=0)
    # Attempts a job gets before the reaper fails it instead of requeueing it after a lost worker.
    job_max_attempts: int = Field(default=3, gt=0)

    @field_validator("s3_presign_endpoint_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def database_url_value(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def redis_url_value(self) -> str:
        return self.redis_url.get_secret_value()

    def secret_values(self) -> list[str]:
        """Return every secret this object holds, for log redaction and tests."""
        secrets = [self.s3_secret_access_key.get_secret_value()]
        for url in (self.database_url_value, self.redis_url_value):
            password = _url_password(url)
            if password:
                secrets.append(password)
        return [s for s in secrets if s]


def _url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # noqa: BLE001 - a malformed URL has no password to hide
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings; tests call `get_settings.cache_clear()` after changing
    the environment."""
    return Settings()
