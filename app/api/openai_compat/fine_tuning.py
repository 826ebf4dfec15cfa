"""/v1/fine_tuning/jobs: tunelab's jobs as OpenAI fine-tuning jobs (`ftjob-<job id>`).

A job is created, checked and enqueued by the same code as POST /api/jobs; OpenAI's
parameters map onto the training spec:

- `model` → base_model; `training_file` / `validation_file` (`file-<id>`) → the datasets;
- `n_epochs` → epochs, `batch_size` → batch_size, `learning_rate_multiplier` → a multiple of the
  method's default learning rate; "auto" keeps tunelab's default; given in
  `method.supervised.hyperparameters` or (deprecated by OpenAI) `hyperparameters`;
- `method: {"type": "dpo", "dpo": {"hyperparameters": {"beta": ...}}}` → objective "dpo" with
  `preference.beta` (and the hyperparameters above); the job reports its method back so.
  tunelab's other objectives are the extra field `objective` ("orpo", "kto"), with `preference`;
- `suffix`, `seed`, `metadata` as OpenAI defines them;
- `integrations` as OpenAI defines them (`[{"type": "wandb", "wandb": {"project": ...}}]`), and
  MLflow in the same shape (`{"type": "mlflow", "mlflow": {"tracking_uri": ..., "experiment_name": ...}}`):
  the spec's `integrations`, returned on the job object;
- a fine-tuned model as `model` (`ft:...:ftjob-<id>`) continues that job: a new job starts from
  its adapter (or weights), on its base model, with its method and LoRA settings unless given.

tunelab's own settings are extra fields: any training spec field (`lora`, `max_steps`,
`max_seq_length`, ...), `method` as a string ("lora", "qlora", "full") instead of OpenAI's
method object, and `queue`, `team_id`, `name`.

Statuses: queued, running, succeeded, failed, cancelled and paused as tunelab's; a job asked to
cancel reads `cancelled` at once (as OpenAI's cancel does), while it stops at its next step, and
one asked to pause reads `paused` at once likewise. `pause` stops a running job at its next step
with a checkpoint there; `resume` puts a paused job (or a cancelled or failed one) back in the
queue, to continue from that checkpoint.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, ValidationError

from app.accounts.access import TeamAccess
from app.api.deps import AccessDep, SessionDep
from app.chat.model_names import ModelNotFound, checkpoint_model_id, fine_tuned_job, fine_tuned_model_id, team_slug
from app.contract.spec import Method, TrainingSpec
from app.core.errors import InvalidField
from app.core.tables import Job, JobEvent, JobMetric, JobState, Team, utcnow
from app.core.worker_registry import served_queues
from app.jobs.artifacts import checkpoints_before
from app.jobs.exports import openai_metrics
from app.jobs.queries import eta_seconds, list_jobs
from app.jobs.submission import JobSubmission, cancel_job, pause_job, resume_job, submit_job
from app.jobs.timeline import items_newest_first, values_at
from app.jobs.workers import job_queue_warning, queue_warning

from .common import cursor, number_in, page, public_id, team_names, unix
from .errors import OpenAIError, OpenAIRoute, invalid, not_found
from .files import FILE, result_file_id

router = APIRouter(route_class=OpenAIRoute)

JOB, CHECKPOINT, EVENT = "ftjob", "ftckpt", "ftevent"
_STATUS = {
    JobState.queued: "queued",
    JobState.running: "running",
    JobState.cancelling: "cancelled",
    JobState.pausing: "paused",
    JobState.paused: "paused",
    JobState.succeeded: "succeeded",
    JobState.failed: "failed",
    JobState.cancelled: "cancelled",
}
# tunelab's field names → OpenAI's parameter names, in error messages.
_PARAMS = {"base_model": "model", "dataset_id": "training_file", "validation_dataset_id": "validation_file"}


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Literal["auto"] | int | None = None
    batch_size: Literal["auto"] | int | None = None
    learning_rate_multiplier: Literal["auto"] | float | None = None
    beta: Literal["auto"] | float | None = None  # DPO's


class MethodSettings(BaseModel):
    hyperparameters: Hyperparameters | None = None


class OpenAIMethod(BaseModel):
    type: str
    supervised: MethodSettings | None = None
    dpo: MethodSettings | None = None


class FineTuningJobSubmission(BaseModel):
    """OpenAI's parameters; extra fields are tunelab's own (see the module's docstring)."""

    model_config = ConfigDict(extra="allow")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | OpenAIMethod | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    name: str | None = None
    queue: str | None = None
    team_id: int | None = None


def _invalid(errors, renames) -> OpenAIError:
    """A 400 naming the parameter at fault as the request named it (no `body.spec.` prefix)."""
    errors = [{**error, "loc": [part for part in error["loc"] if part not in ("body", "spec")]} for error in errors]
    return invalid(errors, renames)


def _hyperparameters(body: FineTuningJobSubmission) -> tuple[Hyperparameters, str]:
    """The hyperparameters given, and the parameter path they were given at."""
    method = body.method if isinstance(body.method, OpenAIMethod) else None
    nested = getattr(method, method.type, None) if method is not None and method.type in ("supervised", "dpo") else None
    if nested is not None and nested.hyperparameters is not None:
        path = f"method.{method.type}.hyperparameters"
        if body.hyperparameters is not None:
            raise OpenAIError(
                400, f"give hyperparameters in {path} or in hyperparameters, not both", param="hyperparameters"
            )
        return nested.hyperparameters, path
    return body.hyperparameters or Hyperparameters(), "hyperparameters"


def _objective(body: FineTuningJobSubmission, spec: dict[str, Any], hyper: Hyperparameters, path: str) -> None:
    """OpenAI's method type (and DPO's beta) in `spec`, as tunelab's objective and preference settings."""
    if not isinstance(body.method, OpenAIMethod):
        objective = spec.get("objective", "sft")
    elif body.method.type not in ("supervised", "dpo"):
        raise OpenAIError(
            400,
            f"tunelab trains with method type 'supervised' or 'dpo', not {body.method.type!r}; for ORPO or KTO give "
            "`objective`: 'orpo' or 'kto' (and LoRA, QLoRA or full as `method`: 'lora', 'qlora' or 'full')",
            param="method.type",
        )
    else:
        objective = "dpo" if body.method.type == "dpo" else "sft"
        if spec.setdefault("objective", objective) != objective:
            raise OpenAIError(
                400, f"method type {body.method.type!r} and objective {spec['objective']!r} disagree", param="objective"
            )
    if hyper.beta not in (None, "auto"):
        if objective == "sft":
            raise OpenAIError(400, "beta applies to preference training (method type 'dpo')", param=f"{path}.beta")
        preference = spec.setdefault("preference", {})
        if not isinstance(preference, dict) or "beta" in preference:
            raise OpenAIError(400, "beta is given twice", param=f"{path}.beta")
        preference["beta"] = hyper.beta


def _file_number(value: str | None, param: str) -> int | None:
    if value is None:
        return None
    number = number_in(value, FILE)
    if number is None:
        raise OpenAIError(400, f"no such file: {value!r}", param=param)
    return number


def _parent(session, access: TeamAccess, model: str) -> Job | None:
    """The job a fine-tuned `model` continues; None for a base model."""
    try:
        return fine_tuned_job(session, access, model)
    except ModelNotFound as error:
        raise OpenAIError(400, str(error), param="model", code="model_not_found") from None


def job_in(body: FineTuningJobSubmission, parent: Job | None = None) -> JobSubmission:
    """The tunelab submission an OpenAI job request stands for (continuing `parent`, the job
    whose fine-tuned model `model` names); raises OpenAIError."""
    hyper, path = _hyperparameters(body)
    spec: dict[str, Any] = dict(body.model_extra or {})
    if body.integrations:
        spec["integrations"] = body.integrations
    _objective(body, spec, hyper, path)
    renames = dict(_PARAMS)
    if parent is not None:  # the parent's adapter settings, unless given: its weights must fit them
        parent_spec = TrainingSpec.model_validate(parent.spec)
        if not isinstance(body.method, Method):
            spec.setdefault("method", parent_spec.method.value)
        spec.setdefault("lora", parent_spec.lora.model_dump(mode="json"))
    given = {
        "base_model": parent.base_model if parent is not None else body.model,
        "seed": body.seed,
        "method": body.method.value if isinstance(body.method, Method) else None,
        "epochs": hyper.n_epochs,
        "batch_size": hyper.batch_size,
    }
    for field, value in given.items():
        if value is None or value == "auto":
            continue
        if field in spec:
            raise OpenAIError(400, f"{field} is given twice", param=field)
        spec[field] = value
    renames.update(epochs=f"{path}.n_epochs", batch_size=f"{path}.batch_size")
    if hyper.beta not in (None, "auto"):
        renames["preference"] = path  # preference.beta was given as {path}.beta
    try:
        training_spec = TrainingSpec.model_validate(spec)
        multiplier = hyper.learning_rate_multiplier
        if multiplier not in (None, "auto"):
            if training_spec.learning_rate is not None:
                raise OpenAIError(
                    400,
                    "give learning_rate_multiplier or learning_rate, not both",
                    param=f"{path}.learning_rate_multiplier",
                )
            renames["learning_rate"] = f"{path}.learning_rate_multiplier"
            training_spec.learning_rate = multiplier * training_spec.default_learning_rate
        return JobSubmission(
            spec=training_spec,
            dataset_id=_file_number(body.training_file, "training_file"),
            validation_dataset_id=_file_number(body.validation_file, "validation_file"),
            name=body.name,
            suffix=body.suffix,
            team_id=body.team_id,
            queue=body.queue or JobSubmission.model_fields["queue"].default,
            metadata=body.metadata or {},
            parent_job_id=parent.id if parent is not None else None,
        )
    except ValidationError as error:
        raise _invalid(error.errors(), renames) from None


def _round(value: float) -> float | int:
    value = float(f"{value:.6g}")
    return int(value) if value.is_integer() else value


def hyperparameters_of(job: Job) -> dict[str, Any]:
    spec = TrainingSpec.model_validate(job.spec)
    return {
        "n_epochs": _round(spec.epochs),
        "batch_size": spec.batch_size,
        "learning_rate_multiplier": _round(spec.effective_learning_rate / spec.default_learning_rate),
    }


def method_of(job: Job, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The job's method in OpenAI's shape: supervised, dpo (with its beta), or tunelab's orpo / kto likewise."""
    spec = TrainingSpec.model_validate(job.spec)
    if not spec.is_preference:
        return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    kind = spec.objective.value
    return {"type": kind, kind: {"hyperparameters": {**hyperparameters, "beta": _round(spec.preference.beta)}}}


def job_object(job: Job, team_name: str, warning: str | None = None) -> dict[str, Any]:
    """OpenAI's fine_tuning.job, plus tunelab's `warning` (e.g. no live worker serves its queue)."""
    hyperparameters = hyperparameters_of(job)
    eta = eta_seconds(job)
    failed = job.state == JobState.failed
    error = {"code": "training_failed", "message": job.error, "param": None} if failed else None
    return {
        "object": "fine_tuning.job",
        "id": public_id(JOB, job.id),
        "model": job.base_model,
        "created_at": unix(job.created_at),
        "finished_at": unix(job.finished_at) if job.state.is_terminal else None,
        "fine_tuned_model": fine_tuned_model_id(job, team_name),
        "organization_id": team_slug(team_name),
        "status": _STATUS[job.state],
        "result_files": [file_id] if (file_id := result_file_id(job)) else [],
        "training_file": public_id(FILE, job.dataset_id) if job.dataset_id else None,
        "validation_file": public_id(FILE, job.validation_dataset_id) if job.validation_dataset_id else None,
        "hyperparameters": hyperparameters,
        "trained_tokens": job.trained_tokens,
        "error": error,
        "seed": job.spec.get("seed"),
        "suffix": job.suffix,
        "metadata": job.user_metadata or None,
        "integrations": job.spec.get("integrations") or [],
        "estimated_finish": unix(utcnow() + timedelta(seconds=eta)) if eta is not None else None,
        "method": method_of(job, hyperparameters),
        "warning": warning,
    }


def _job_number(job_id: str) -> int:
    number = number_in(job_id, JOB)
    if number is None:
        raise not_found("fine-tuning job", job_id)
    return number


def _job(session, access: TeamAccess, job_id: str) -> Job:
    return access.get(session, Job, _job_number(job_id))


def _team_name(session, job: Job) -> str:
    return session.get(Team, job.team_id).name


@router.post("/fine_tuning/jobs")
def create_fine_tuning_job(body: FineTuningJobSubmission, access: AccessDep, session: SessionDep) -> dict:
    submission = job_in(body, _parent(session, access, body.model))
    try:
        job = submit_job(session, access, submission)
    except InvalidField as error:
        raise _invalid(error.errors(), _PARAMS) from None
    return job_object(job, _team_name(session, job), job_queue_warning(session, job))


@router.get("/fine_tuning/jobs")
def list_fine_tuning_jobs(
    access: AccessDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict:
    rows = list_jobs(session, access, before_id=cursor(after, JOB), limit=limit + 1)
    names, served = team_names(session, access), served_queues(session)
    return page(
        [job_object(job, names[job.team_id], queue_warning(job, served)) for job in rows[:limit]], len(rows) > limit
    )


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_fine_tuning_job(job_id: str, access: AccessDep, session: SessionDep) -> dict:
    job = _job(session, access, job_id)
    return job_object(job, _team_name(session, job), job_queue_warning(session, job))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_fine_tuning_job(job_id: str, access: AccessDep, session: SessionDep) -> dict:
    job = cancel_job(session, access, _job_number(job_id))
    return job_object(job, _team_name(session, job))


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_fine_tuning_job(job_id: str, access: AccessDep, session: SessionDep) -> dict:
    job = pause_job(session, access, _job_number(job_id))
    return job_object(job, _team_name(session, job))


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_fine_tuning_job(job_id: str, access: AccessDep, session: SessionDep) -> dict:
    job = resume_job(session, access, _job_number(job_id))
    return job_object(job, _team_name(session, job))


_LEVELS = {"warning": "warn", "error": "error"}
# What a metrics event's message says of its values.
_METRIC_WORDS = {
    "train_loss": "training loss",
    "valid_loss": "validation loss",
    "train_reward_accuracy": "reward accuracy",
    "valid_reward_accuracy": "validation reward accuracy",
}


def _event_id(job: Job, seq: int) -> str:
    """`ftevent-<job>-<seq>`: a job's events and metric points share its sequence numbers."""
    return f"{EVENT}-{job.id}-{seq}"


def _event_cursor(after: str | None, job: Job) -> int | None:
    """The sequence number an `after` event id of this job stands for."""
    if after is None:
        return None
    match = re.fullmatch(rf"{EVENT}-(\d{{1,18}})-(\d{{1,18}})", after)
    if match is None or int(match[1]) != job.id:
        raise OpenAIError(400, f"after must be one of this job's event ids, like {EVENT}-{job.id}-123", param="after")
    return int(match[2])


def _event_object(job: Job, item: JobEvent | JobMetric) -> dict[str, Any]:
    """A message event, or a metric point as OpenAI's `metrics` event of its step."""
    event = {"object": "fine_tuning.job.event", "id": _event_id(job, item.seq), "created_at": unix(item.created_at)}
    if isinstance(item, JobEvent):
        level = _LEVELS.get(item.level, "info")
        return {**event, "level": level, "message": item.message, "data": item.data, "type": "message"}
    metrics = openai_metrics(item.values, _is_preference(job))
    steps = f"{item.step}/{job.total_steps}" if job.total_steps else f"{item.step}"
    said = ", ".join(f"{words}={metrics[name]:.4g}" for name, words in _METRIC_WORDS.items() if name in metrics)
    data = {"step": item.step, **metrics, "total_steps": job.total_steps}
    return {**event, "level": "info", "message": f"Step {steps}: {said}".rstrip(": "), "data": data, "type": "metrics"}


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_fine_tuning_events(
    job_id: str,
    access: AccessDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict:
    """The job's events, newest first, `after` paging towards older ones: its messages, and a
    `metrics` event for each logged step (train) and evaluation (valid), as OpenAI's API sends."""
    job = _job(session, access, job_id)
    rows = items_newest_first(session, job, before_seq=_event_cursor(after, job), limit=limit + 1)
    return page([_event_object(job, item) for item in rows[:limit]], len(rows) > limit)


def _checkpoint_metrics(session, job: Job, step: int) -> dict[str, float]:
    """The checkpoint's metrics under OpenAI's names (see `exports.OPENAI_METRICS`), with a
    preference job's rewards as OpenAI's result files of DPO jobs would name them."""
    return {"step": float(step), **openai_metrics(values_at(session, job, step), _is_preference(job))}


def _is_preference(job: Job) -> bool:
    return job.spec.get("objective", "sft") != "sft"


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_fine_tuning_checkpoints(
    job_id: str,
    access: AccessDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict:
    """The job's kept checkpoints, newest first, each a model chat can use."""
    job = _job(session, access, job_id)
    team_name = _team_name(session, job)
    rows = checkpoints_before(session, job.id, before_id=cursor(after, CHECKPOINT), limit=limit + 1)
    items = [
        {
            "object": "fine_tuning.job.checkpoint",
            "id": public_id(CHECKPOINT, artifact.id),
            "created_at": unix(artifact.created_at),
            "fine_tuning_job_id": public_id(JOB, job.id),
            "fine_tuned_model_checkpoint": checkpoint_model_id(job, team_name, artifact.step),
            "step_number": artifact.step,
            "metrics": _checkpoint_metrics(session, job, artifact.step),
        }
        for artifact in rows[:limit]
    ]
    return page(items, len(rows) > limit)
