"""Request and response bodies of the JSON API (pydantic), and how rows become them. The
training spec lives in `app.contract.spec` (shared with the worker); a job submission in
`app.jobs.submission`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.contract.export import GgufQuantization
from app.core.tables import ArtifactKind, Dataset, EvaluationState, Job, JobState, Role
from app.jobs.queries import eta_seconds, progress
from app.jobs.workers import WorkersOverview, WorkerView


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class LoginIn(_In):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class TeamRoleOut(BaseModel):
    id: int
    name: str
    role: Role


class MeOut(BaseModel):
    id: int
    email: str
    is_admin: bool
    teams: list[TeamRoleOut]


class TokenIn(_In):
    name: str = Field("default", max_length=100)
    expires_in_days: int | None = Field(None, ge=1, le=3650)
    team_id: int | None = Field(
        None, description="Bind the token to this team: it works there only, with no `team_id` in requests."
    )


class TokenOut(_Out):
    id: int
    name: str
    prefix: str
    team_id: int | None = Field(description="The team the token is bound to; null: all of its user's teams.")
    team_name: str | None = None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row) -> TokenOut:
        out = cls.model_validate(row)
        out.team_name = row.team.name if row.team is not None else None
        return out


class TokenCreatedOut(TokenOut):
    token: str = Field(description="The token itself. It is shown this once and cannot be recovered.")


class TeamIn(_In):
    name: str = Field(max_length=64)


class MemberIn(_In):
    email: str = Field(max_length=254)
    role: Role = Role.member


class MemberOut(BaseModel):
    user_id: int
    email: str
    role: Role


class InvitationIn(_In):
    email: str = Field(max_length=254)
    role: Role = Role.member


class InvitationOut(_Out):
    id: int
    team_id: int
    email: str
    role: Role
    created_at: datetime
    expires_at: datetime


class InvitationCreatedOut(InvitationOut):
    url: str = Field(description="The link to hand to the invitee. It is shown this once and works once.")


class UserIn(_In):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    team: str = Field(max_length=64)
    role: Role = Role.member
    is_admin: bool = False


class UserOut(_Out):
    id: int
    email: str
    is_admin: bool


# ---- jobs ----------------------------------------------------------------------------------


class GgufExportIn(_In):
    quantization: GgufQuantization = Field(
        description="f16 (no loss), bf16, q8_0 (near-lossless, half the size), q5_0, q4_0 (smallest)."
    )
    hub_repo: str | None = Field(
        None,
        max_length=200,
        description="Also push the file and its Modelfile to this Hugging Face repository (owner/name); "
        "needs TUNELAB_HF_TOKEN and a machine that is online.",
    )


class ArtifactOut(_Out):
    id: int
    kind: ArtifactKind
    step: int
    size_bytes: int
    created_at: datetime
    meta: dict


class JobOut(BaseModel):
    id: int
    name: str
    suffix: str | None
    team_id: int
    created_by: str | None
    state: JobState
    base_model: str
    method: str
    dataset_id: int | None
    validation_dataset_id: int | None
    queue: str
    parent_job_id: int | None = Field(description="The succeeded job this one continues from")
    sweep_id: int | None = Field(None, description="The sweep this job is a trial of")
    sweep_trial: int | None = Field(None, description="Its trial number in that sweep")
    spec: dict
    metadata: dict
    error: str | None
    attempts: int
    step: int
    total_steps: int | None
    progress: float | None = Field(description="step / total_steps, 0 to 1")
    eta_seconds: float | None
    epoch: float | None
    train_loss: float | None
    eval_loss: float | None
    trained_tokens: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    warning: str | None = Field(
        None, description="Why the job may not start, e.g. no live worker serves its queue (checked on every read)."
    )

    @classmethod
    def of(cls, job: Job, *, warning: str | None = None) -> JobOut:
        return cls(
            id=job.id,
            name=job.name,
            suffix=job.suffix,
            team_id=job.team_id,
            created_by=job.created_by.email if job.created_by else None,
            state=job.state,
            base_model=job.base_model,
            method=job.method,
            dataset_id=job.dataset_id,
            validation_dataset_id=job.validation_dataset_id,
            queue=job.queue,
            parent_job_id=job.parent_job_id,
            sweep_id=job.sweep_id,
            sweep_trial=job.sweep_trial,
            spec=job.spec,
            metadata=job.user_metadata,
            error=job.error,
            attempts=job.attempts,
            step=job.step,
            total_steps=job.total_steps,
            progress=progress(job),
            eta_seconds=eta_seconds(job),
            epoch=job.epoch,
            train_loss=job.train_loss,
            eval_loss=job.eval_loss,
            trained_tokens=job.trained_tokens,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
            warning=warning,
        )


class JobPage(BaseModel):
    data: list[JobOut]
    has_more: bool


class JobEventOut(_Out):
    seq: int
    created_at: datetime
    level: str
    message: str
    data: dict


class MetricOut(BaseModel):
    seq: int
    step: int
    split: str
    created_at: datetime
    values: dict


class SamplesOut(_Out):
    """The model's answers at one evaluation: `kind` generation (prompt, reference, answer, loss per
    row), base (the base model's answers, step 0) or misclassified (text, predicted, label, probability)."""

    seq: int
    step: int
    kind: str
    created_at: datetime
    rows: list[dict]


class EvaluationIn(BaseModel):
    dataset_id: int = Field(description="A dataset of your team to evaluate the job's final weights on.")


class EvaluationOut(_Out):
    id: int
    job_id: int
    dataset_id: int | None
    dataset_name: str | None = None
    state: EvaluationState
    metrics: dict
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, evaluation) -> EvaluationOut:
        out = cls.model_validate(evaluation)
        out.dataset_name = evaluation.dataset.name if evaluation.dataset else None
        return out


# ---- datasets ------------------------------------------------------------------------------


class DatasetOut(_Out):
    id: int
    team_id: int
    name: str
    filename: str
    purpose: str
    format: str
    row_count: int
    size_bytes: int
    sha256: str
    stats: dict
    created_at: datetime
    created_by: str | None = None
    duplicate: bool = Field(False, description="True when this exact file was already uploaded to the team.")

    @classmethod
    def of(cls, dataset: Dataset, duplicate: bool = False) -> DatasetOut:
        fields = {name: getattr(dataset, name) for name in cls.model_fields if name not in ("created_by", "duplicate")}
        created_by = dataset.created_by.email if dataset.created_by else None
        return cls(**fields, created_by=created_by, duplicate=duplicate)


class DeviceOut(BaseModel):
    """A GPU (from NVIDIA's management library) or, for a worker without one, its CPU."""

    kind: str = Field(description="gpu or cpu")
    index: int | None = None
    name: str
    cores: int | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_percent: int | None = None


class JobOnWorkerOut(BaseModel):
    id: int
    name: str


class WorkerOut(BaseModel):
    name: str
    hostname: str
    pid: int
    queues: list[str]
    devices: list[DeviceOut]
    started_at: datetime
    last_seen_at: datetime
    stale: bool = Field(description="No heartbeat for longer than TUNELAB_WORKER_STALE_AFTER_S")
    busy: bool
    busy_since: datetime | None
    job: JobOnWorkerOut | None = Field(description="The job it runs, when it is one of your teams' jobs")

    @classmethod
    def of(cls, worker: WorkerView) -> WorkerOut:
        job = worker.job
        return cls(
            name=worker.name,
            hostname=worker.hostname,
            pid=worker.pid,
            queues=worker.queues,
            devices=[DeviceOut.model_validate(device) for device in worker.devices],
            started_at=worker.started_at,
            last_seen_at=worker.last_seen_at,
            stale=worker.stale,
            busy=job is not None,
            busy_since=job.since if job else None,
            job=JobOnWorkerOut(id=job.id, name=job.name) if job and job.id is not None else None,
        )


class QueueOut(BaseModel):
    name: str
    waiting: int | None = Field(description="Messages waiting in the broker; null when it cannot be read")
    workers: int = Field(description="Live workers taking from this queue")


class GpuCountsOut(BaseModel):
    total: int
    busy: int
    free: int


class WorkersOut(BaseModel):
    workers: list[WorkerOut]
    queues: list[QueueOut]
    gpus: GpuCountsOut
    stale_after_s: float

    @classmethod
    def of(cls, overview: WorkersOverview) -> WorkersOut:
        gpus = overview.gpus
        return cls(
            workers=[WorkerOut.of(worker) for worker in overview.workers],
            queues=[QueueOut(name=q.name, waiting=q.waiting, workers=q.workers) for q in overview.queues],
            gpus=GpuCountsOut(total=gpus.total, busy=gpus.busy, free=gpus.free),
            stale_after_s=overview.stale_after_s,
        )


EventType = Annotated[str, Field(max_length=64)]


class WebhookIn(_In):
    url: str = Field(max_length=2000, description="An http(s) URL; it receives POSTs signed the Standard Webhooks way.")
    event_types: list[EventType] = Field(
        max_length=20, description="Events to send: fine_tuning.job.succeeded, .failed, .cancelled, .running, ..."
    )
    description: str = Field("", max_length=200)


class WebhookUpdateIn(_In):
    url: str | None = Field(None, max_length=2000)
    event_types: list[EventType] | None = Field(None, max_length=20)
    description: str | None = Field(None, max_length=200)
    enabled: bool | None = None


class WebhookOut(_Out):
    id: int
    team_id: int
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    created_at: datetime


class WebhookSecretOut(WebhookOut):
    secret: str = Field(description="The signing secret (whsec_...). It is shown this once.")


class WebhookAttemptOut(BaseModel):
    at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None


class WebhookDeliveryOut(_Out):
    id: int
    event_id: str
    event_type: str
    state: str = Field(description="pending (being delivered or waiting for a retry), delivered or failed")
    attempts: list[WebhookAttemptOut]
    payload: dict
    created_at: datetime
    finished_at: datetime | None
