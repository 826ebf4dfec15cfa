"""The database schema (SQLAlchemy 2). It changes only through Alembic migrations.

Every dataset and job belongs to a team; queries for them go through
`app.accounts.access.TeamAccess`. Job events and metric points share one per-job sequence number
(`Job.last_seq`), which is the SSE event id of the live streams.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite returns naive ones otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use app.core.tables.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Role(str, enum.Enum):
    owner = "owner"
    member = "member"
    viewer = "viewer"

    @property
    def can_write(self) -> bool:
        return self in (Role.owner, Role.member)


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    pausing = "pausing"  # asked to pause: stops at its next step, with a checkpoint there
    paused = "paused"  # stopped with its checkpoint, until someone resumes it
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


class CompletionState(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (CompletionState.succeeded, CompletionState.failed, CompletionState.cancelled)


class ArtifactKind(str, enum.Enum):
    checkpoint = "checkpoint"  # a resumable training state, kept while the trainer keeps it
    adapter = "adapter"  # the trained LoRA / QLoRA adapter, in PEFT format
    model = "model"  # all the weights, from full fine-tuning
    merged = "merged"  # the base model with the adapter merged in, built on request
    # A GGUF file of the merged model with its Ollama Modelfile, built on request: one per quantisation.
    gguf_f16 = "gguf-f16"
    gguf_bf16 = "gguf-bf16"
    gguf_q8_0 = "gguf-q8_0"
    gguf_q5_0 = "gguf-q5_0"
    gguf_q4_0 = "gguf-q4_0"
    tracking = "tracking"  # experiment-tracking files: TensorBoard event files, an offline W&B run


def _enum(cls: type[enum.Enum], name: str, length: int = 16) -> Enum:
    # Stored as plain strings (no native Postgres enum): adding a value needs no ALTER TYPE.
    return Enum(cls, name=name, native_enum=False, length=length, validate_strings=True)


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="team", cascade="all, delete-orphan")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The team the user works in, in the browser: chosen with the header's switch, kept across
    # sign-ins. None (or a team they have left) means their first team.
    current_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "team_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(back_populates="memberships")
    team: Mapped[Team] = relationship(back_populates="memberships")


class ApiToken(Base):
    """Only a SHA-256 of the token is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # A token bound to a team (like an OpenAI project key) works in that team only: new work
    # goes there with no `team_id`, and every other team's objects answer 404.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()
    team: Mapped[Team | None] = relationship()


class Invitation(Base):
    """An owner's invitation to join a team with a role. The link carries a random secret;
    only its SHA-256 is stored. Single use: `accepted_at` (or `revoked_at`) ends it."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    accepted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None]

    team: Mapped[Team] = relationship()
    invited_by: Mapped[User | None] = relationship(foreign_keys=[invited_by_id])


class BrowserSession(Base):
    """A signed-in browser. The cookie carries the session's id; only its SHA-256 is stored.
    Signing out, or anything else that ends it, sets `revoked_at`: the cookie then no longer
    signs anyone in, even a copy taken before."""

    __tablename__ = "browser_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("team_id", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32), default="fine-tune")
    format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    row_count: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Byte offsets of every n-th line, so a preview page at any offset reads little of the file.
    line_index: Mapped[dict[str, Any]] = mapped_column(default=dict)
    blob_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    created_by: Mapped[User | None] = relationship()


class Job(Base):
    __tablename__ = "jobs"
    # One job per trial of a sweep: two app processes launching the same trial, one loses.
    __table_args__ = (UniqueConstraint("sweep_id", "sweep_trial"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200))
    suffix: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.queued, index=True)
    base_model: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    validation_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    queue: Mapped[str] = mapped_column(String(64), default="default")
    # The succeeded job whose adapter (or weights) this one starts from and keeps training.
    parent_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    # A trial of a hyperparameter sweep (`app.sweeps`): its sweep, its number there, and the step
    # at which the sweep's pruner stopped it (None: not pruned).
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    sweep_trial: Mapped[int | None] = mapped_column(Integer)
    pruned_at_step: Mapped[int | None] = mapped_column(Integer)

    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started (or resumed) it
    crashes: Mapped[int] = mapped_column(Integer, default=0)  # times its worker vanished mid-run
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Recent optimizer steps per second, for the ETA; kept by the worker while it trains.
    steps_per_second: Mapped[float | None] = mapped_column(Float)
    # Highest sequence number handed to an event or metric point of this job.
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Which worker process holds the job, and when it last said so.
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)

    created_by: Mapped[User | None] = relationship()
    dataset: Mapped[Dataset | None] = relationship(foreign_keys=[dataset_id])
    validation_dataset: Mapped[Dataset | None] = relationship(foreign_keys=[validation_dataset_id])


class SweepState(str, enum.Enum):
    running = "running"  # trials are being launched or are running
    finished = "finished"  # every trial has ended
    cancelled = "cancelled"  # stopped by a user: no trial is launched any more


class Sweep(Base):
    """A hyperparameter search: a base job submission, the values to try, and how trials are
    judged. Its trials are ordinary jobs (`Job.sweep_id`), launched by `app.sweeps.scheduling`
    at most `max_concurrent` at a time, in the order of `trials` (each one's parameter values)."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[SweepState] = mapped_column(_enum(SweepState, "sweep_state"), default=SweepState.running)
    # The job submission every trial starts from (spec, datasets, queue), as JobSubmission's JSON.
    submission: Mapped[dict[str, Any]]
    strategy: Mapped[str] = mapped_column(String(16))  # "grid" or "random"
    space: Mapped[dict[str, Any]]  # parameter path -> values (grid) or a distribution (random)
    seed: Mapped[int | None] = mapped_column(Integer)
    trials: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # each trial's parameter values, in order
    metric: Mapped[str] = mapped_column(String(32))  # "eval_loss" or "train_loss"
    direction: Mapped[str] = mapped_column(String(8))  # "minimize" or "maximize"
    max_concurrent: Mapped[int] = mapped_column(Integer)
    prune: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    created_by: Mapped[User | None] = relationship()


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobMetric(Base):
    """One logged point. (job, split, step) is unique, so a retried job never duplicates points."""

    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "split", "step"), UniqueConstraint("job_id", "seq"))

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(8))  # "train" or "eval"
    step: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobSamples(Base):
    """What the model answered at one evaluation (`step`), on the same held-out rows every time:
    `kind` "generation" (a language model's answers to fixed prompts, beside the reference, each
    with its loss), "base" (the base model's answers to them, once, at step 0) or
    "misclassified" (a classifier's wrong predictions). It shares the job's sequence numbers,
    so the live stream carries it like a metric point."""

    __tablename__ = "job_samples"
    __table_args__ = (UniqueConstraint("job_id", "kind", "step"), UniqueConstraint("job_id", "seq"))

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer)
    rows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvaluationState(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class JobEvaluation(Base):
    """A finished job's weights evaluated on another dataset, on request, by a worker of the job's queue."""

    __tablename__ = "job_evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    state: Mapped[EvaluationState] = mapped_column(
        _enum(EvaluationState, "evaluation_state"), default=EvaluationState.queued
    )
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    dataset: Mapped[Dataset | None] = relationship()


class Artifact(Base):
    """A file or directory a job produced, in the blob store: checkpoints, the adapter, the merged model."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "kind", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ArtifactKind] = mapped_column(_enum(ArtifactKind, "artifact_kind", length=32))
    step: Mapped[int] = mapped_column(Integer, default=0)
    blob_key: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerProcess(Base):
    """A live worker process, kept fresh by its heartbeat; /healthz counts the fresh ones."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(255), default="default")
    device: Mapped[str | None] = mapped_column(String(255))
    # What the worker computes on, as its last heartbeat read it: one entry per GPU (name, memory
    # used/total in bytes, utilisation %), or a single CPU entry; see worker/devices.py.
    devices: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The training job its pool process runs now, and since when (set and cleared by the job).
    current_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    current_job_since: Mapped[datetime | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Completion(Base):
    """A chat completion asked of a model. The app stores the request, an inference worker
    answers it and writes the text into `text` as it is generated, and the app streams it
    from there. Finished rows are deleted after a while (see `app.chat.completions`)."""

    __tablename__ = "completions"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    model: Mapped[str] = mapped_column(String(400))  # as the caller named it
    base_model: Mapped[str] = mapped_column(String(200))
    # Blob key of the fine-tuned weights (an adapter or a whole model); none for a base model.
    weights_key: Mapped[str | None] = mapped_column(String(500))
    request: Mapped[dict[str, Any]]  # messages and sampling settings, as the worker takes them
    state: Mapped[CompletionState] = mapped_column(
        _enum(CompletionState, "completion_state"), default=CompletionState.queued
    )
    text: Mapped[str] = mapped_column(Text, default="")
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Oldest messages the worker left out to fit the conversation in the model's context
    # (asked for with `fit_context`); none when it was not asked to.
    dropped_messages: Mapped[int | None] = mapped_column(Integer)
    # A classifier's answer: {label: probability}, for a request of kind "classify".
    probabilities: Mapped[dict[str, Any] | None]
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Moves whenever the worker writes: the app fails an answer that stops moving.
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """Where a team's job events are POSTed, signed the Standard Webhooks way with `secret`
    (`whsec_<base64>`). The secret must stay readable to sign; it is shown once, at creation
    (and rotation), and never logged or answered again."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(200), default="")
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint (the outbox): written in the transaction that made the event,
    then delivered by a worker. `attempts` logs each try (when, status code, duration, error)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(64))  # the `webhook-id` header: the same on every retry
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, failed
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # When the next try is due (while pending): one long overdue lost its message, and is sent again.
    due_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
