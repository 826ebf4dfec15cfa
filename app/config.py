"""All of tunelab's settings, in one class, read from the environment (prefix TUNELAB_)
or from a `.env` file in the working directory.

Everything has a default that runs the embedded mode: SQLite and a SQLite-backed broker
under the data directory, no other service.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "changethis", ""}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELAB_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(Path("data"), description="Root of the blob store: datasets, checkpoints, adapters.")
    models_dir: Path | None = Field(None, description="Local base models, one folder each (default: DATA_DIR/models).")
    database_url: str | None = Field(None, description="SQLAlchemy URL (default: SQLite file DATA_DIR/tunelab.db).")
    broker_url: str | None = Field(
        None,
        description="Celery broker (default: embedded, a SQLite file DATA_DIR/broker.db; redis://... in production).",
    )
    redis_url: str | None = Field(
        None, description="Redis for live push of metrics; without it streams poll the database."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Signs session cookies. Required in production; generated and kept in DATA_DIR in development.",
    )

    allow_hub_downloads: bool = Field(
        False, description="Let workers download base models from the Hugging Face hub (needs internet)."
    )
    wandb_api_key: SecretStr | None = Field(
        None,
        description="Weights & Biases API key of the workers; without it (or W&B unreachable) runs are offline files.",
    )
    wandb_base_url: str = Field("https://api.wandb.ai", description="The W&B server (a self-hosted one's URL).")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking server a job's mlflow integration uses when it names none (http(s) URL)."
    )
    max_upload_bytes: int = Field(2 * 1024**3, ge=1024, description="Largest dataset file accepted.")
    max_row_chars: int = Field(1_000_000, ge=100, description="Longest dataset row (characters) accepted.")
    upload_idle_timeout_s: float = Field(60.0, gt=0, description="An upload that sends nothing this long is cut off.")
    upload_min_bytes_per_s: float = Field(
        10_240, ge=0, description="An upload slower than this on average (after its first 30 s) is cut off."
    )
    max_concurrent_uploads: int = Field(8, ge=1, description="Uploads received at once by one app process.")
    max_uploads_per_user: int = Field(2, ge=1, description="Uploads one user may have in flight at once.")
    session_max_age_s: int = Field(14 * 24 * 3600, ge=60)
    login_failures_per_account: int = Field(10, ge=1, description="Failed sign-ins an account may have in the window.")
    login_failures_per_address: int = Field(50, ge=1, description="Failed sign-ins one client address may have.")
    login_failure_window_s: float = Field(900, gt=0, description="How long a failed sign-in counts.")
    max_concurrent_password_hashes: int = Field(
        4, ge=1, description="Argon2 computations at once (each takes 64 MiB): bounds the memory a login flood takes."
    )
    cookie_secure: bool = Field(False, description="Send cookies over HTTPS only (set behind TLS).")
    invitation_max_age_s: int = Field(
        7 * 24 * 3600, ge=60, description="How long an invitation link to join a team can be used."
    )
    max_pending_invitations: int = Field(100, ge=1, description="Open invitations one team may have at once.")

    # Taking models out: pushes of an export to the Hugging Face Hub.
    hf_token: SecretStr | None = Field(
        None, description="Hugging Face token with write access: lets a GGUF export be pushed to a Hub repository."
    )
    hf_endpoint: str | None = Field(
        None, description="Hugging Face Hub address for pushes (default: huggingface.co, or HF_ENDPOINT)."
    )

    # Workers and job recovery.
    worker_heartbeat_s: float = Field(10.0, gt=0, description="How often a worker says it is alive.")
    worker_stale_after_s: float = Field(60.0, gt=0, description="A job whose worker is silent this long is retried.")
    worker_cpu_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="CPU processes (gloo) a worker without GPU trains one job on; set by `tunelab worker --cpu-processes`.",
    )
    rendezvous_host: str | None = Field(
        None,
        description="Multi-node jobs: the address other hosts reach this worker's torchrun rendezvous at, when it "
        "leads a gang (default: this host's name).",
    )
    rendezvous_ports: str = Field(
        "29400-29499",
        pattern=r"^\d{1,5}-\d{1,5}$",
        description="Multi-node jobs: the port range (FIRST-LAST) a gang's leader picks its rendezvous port from.",
    )
    gang_timeout_s: float = Field(
        180.0, gt=0, description="Multi-node jobs: a gang not formed within this goes back to the queue."
    )
    db_outage_tolerance_s: float = Field(
        120.0, ge=0, description="A training worker waits this long for an unreachable database before giving up."
    )
    job_max_attempts: int = Field(
        3, ge=1, le=100, description="A job whose worker crashes this many times is marked failed."
    )
    broker_visibility_timeout_s: int = Field(
        7 * 24 * 3600, ge=60, description="Redis broker: redelivery of unacknowledged jobs; above the longest job."
    )
    broker_polling_interval_s: float = Field(0.2, gt=0, description="Embedded broker: how often workers look for work.")
    stream_poll_interval_s: float = Field(
        0.25, gt=0, description="Without Redis: how often live streams poll the database."
    )
    stream_access_recheck_s: float = Field(
        15.0, gt=0, description="How often a live stream checks that its caller may still see it (else it closes)."
    )

    # Chat (inference workers).
    inference_queue: str = Field(
        "inference", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$", description="Queue the inference workers answer chat from."
    )
    inference_pickup_timeout_s: float = Field(
        60.0, gt=0, description="A chat request no inference worker has taken this long is answered with an error."
    )
    inference_stall_timeout_s: float = Field(
        300.0, gt=0, description="A chat answer with no progress this long (model loading included) fails."
    )

    # Webhooks (delivered by the workers of `webhooks_queue`, never by a training job).
    webhooks_queue: str = Field(
        "webhooks", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$", description="Queue the webhook deliveries go through."
    )
    webhooks_allow_private: bool = Field(
        False,
        description="Let webhooks go to loopback, private, link-local and this server's own addresses (off: refused).",
    )
    webhooks_timeout_s: float = Field(10.0, gt=0, le=60, description="A webhook receiver must answer within this.")
    webhooks_max_attempts: int = Field(
        10, ge=1, le=30, description="Tries of one webhook delivery before it is marked failed."
    )
    webhooks_backoff_s: float = Field(
        10.0, ge=0, description="Wait before a delivery's first retry; it doubles at each retry (up to an hour)."
    )
    webhooks_per_team: int = Field(20, ge=1, description="Webhook endpoints one team may have.")

    @field_validator("rendezvous_ports")
    @classmethod
    def _port_range(cls, value: str) -> str:
        first, last = (int(part) for part in value.split("-"))
        if not 1024 <= first <= last <= 65535:
            raise ValueError("must be FIRST-LAST with 1024 <= FIRST <= LAST <= 65535, e.g. 29400-29499")
        return value

    @property
    def rendezvous_port_range(self) -> range:
        first, last = (int(part) for part in self.rendezvous_ports.split("-"))
        return range(first, last + 1)

    @field_validator("data_dir", "models_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _production_needs_a_secret(self) -> Settings:
        if self.environment == "production":
            key = self.secret_key.get_secret_value() if self.secret_key else ""
            if key.lower() in _PLACEHOLDER_SECRETS or len(key) < 32:
                raise ValueError("TUNELAB_SECRET_KEY must be set to a random string of 32+ characters in production")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Accept the URLs Postgres tools hand out; use the psycopg 3 driver.
            for prefix in ("postgres://", "postgresql://"):
                if url.startswith(prefix):
                    return "postgresql+psycopg://" + url[len(prefix) :]
            return url
        return f"sqlite:///{self.data_dir / 'tunelab.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"embedded+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def embedded_broker(self) -> bool:
        return self.celery_broker_url.startswith("embedded+")

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def blobs_path(self) -> Path:
        return self.data_dir / "blobs"

    def session_secret(self) -> str:
        """The cookie-signing key: the configured one, else one generated once and kept in
        DATA_DIR (mode 0600) so that sessions survive a restart of the embedded server."""
        if self.secret_key:
            return self.secret_key.get_secret_value()
        path = self.data_dir / "secret_key"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
