"""Launching, cancelling, pausing and resuming a job: the checks a submission must pass, the
queued row, the hand-over to the workers. Behind POST /api/jobs, OpenAI's fine-tuning API and
the pages.

A job can continue a succeeded one (`parent_job_id`): it starts from the parent's adapter (or
weights) and trains them further, on the same base model, with its own data and epochs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.chat.catalog import find_model
from app.chat.model_names import model_suffix
from app.config import get_settings
from app.contract.formats import CLASSIFICATION, architecture_misfit, objective_misfit
from app.contract.spec import TrainingSpec
from app.core.blobs import blob_store
from app.core.errors import Conflict, InvalidField
from app.core.queue import commit_then_enqueue, devices_of, enqueue_job
from app.core.tables import Dataset, Job, JobState
from app.jobs.artifacts import checkpoints, final_weights, merged_model
from app.jobs.memory_estimate import estimate_memory, gpu_targets
from app.jobs.states import RESUMABLE, IllegalTransition, reopen, request_cancel, request_pause, transition
from app.jobs.timeline import add_event
from app.jobs.workers import live_gpus

QUEUE_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"


class JobSubmission(BaseModel):
    """What a launch asks for: the spec, the data, and where it runs."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    spec: TrainingSpec
    dataset_id: int
    validation_dataset_id: int | None = None
    name: str | None = Field(
        None, max_length=200, description="The job's name (default: the suffix, else model · method · dataset)."
    )
    suffix: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._\-]{1,64}$",
        description="Goes into the fine-tuned model's name: ft:<base>:<team>:<suffix>:ftjob-<id> "
        "(default: the job's name when it has one, in those characters).",
    )
    team_id: int | None = Field(None, description="Team to run in (default: your team, if you have one).")
    queue: str = Field("default", pattern=QUEUE_PATTERN, description="Workers serving this queue take the job.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Up to 16 key-value pairs of your own.")
    parent_job_id: int | None = Field(
        None,
        description="Continue a succeeded job of the same team and base model: start from its adapter (or "
        "weights) and keep training them, with this job's data and epochs.",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16:
            raise ValueError("at most 16 metadata keys")
        for key, item in value.items():
            if not 1 <= len(key) <= 64 or len(item) > 512:
                raise ValueError("metadata keys are 1-64 characters and values at most 512")
        return value


def _team_dataset(session: Session, team_id: int, dataset_id: int, field: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.team_id == team_id))
    if dataset is None:
        raise InvalidField((field,), "dataset not found in this team")
    return dataset


def check_submission(session: Session, submission: JobSubmission, team_id: int) -> Dataset:
    """What pydantic cannot check alone: the datasets are the team's, the model is
    reachable, the method fits the data, and evaluation exists where it is asked for.
    Returns the training dataset; raises InvalidField beside the field at fault."""
    spec = submission.spec
    dataset = _team_dataset(session, team_id, submission.dataset_id, "dataset_id")
    validation = None
    if submission.validation_dataset_id:
        validation = _team_dataset(session, team_id, submission.validation_dataset_id, "validation_dataset_id")
    for field, given in (("dataset_id", dataset), ("validation_dataset_id", validation)):
        misfit = objective_misfit(spec.objective.value, given.format) if given is not None else None
        if misfit:
            raise InvalidField((field,), misfit)
    if validation is not None and (validation.format == CLASSIFICATION) != (dataset.format == CLASSIFICATION):
        raise InvalidField(
            ("validation_dataset_id",), f"a {validation.format} file cannot validate {dataset.format} data"
        )

    model = find_model(spec.base_model)
    if model is None and not get_settings().allow_hub_downloads:
        raise InvalidField(
            ("spec", "base_model"),
            f"model {spec.base_model!r} is not in the models directory or the Hugging Face cache "
            "(workers here do not download models)",
        )
    if model is not None and (
        misfit := architecture_misfit(dataset.format, spec.base_model, model.architecture, model.encoder_decoder)
    ):
        raise InvalidField(("dataset_id",), misfit)
    if model is not None and model.max_positions and spec.max_seq_length > model.max_positions:
        raise InvalidField(
            ("spec", "max_seq_length"), f"{spec.base_model} handles at most {model.max_positions} tokens"
        )

    has_eval = validation is not None or spec.eval_split > 0
    if spec.early_stopping_patience is not None and not has_eval:
        raise InvalidField(
            ("spec", "early_stopping_patience"),
            "early stopping needs evaluation: give a validation dataset or an eval split",
        )
    if spec.eval_steps is not None and not has_eval:
        raise InvalidField(("spec", "eval_steps"), "evaluation needs a validation dataset or an eval split")
    if spec.load_best_model_at_end and not has_eval:
        raise InvalidField(
            ("spec", "load_best_model_at_end"),
            "the best checkpoint is found by evaluation: give a validation dataset or an eval split",
        )
    if submission.parent_job_id is not None:
        check_parent(session, team_id, submission.parent_job_id, spec)
    return dataset


# LoRA settings that shape the adapter's weights: a continued job must keep its parent's.
_ADAPTER_SHAPE = ("r", "alpha", "target_modules", "use_dora")


def check_parent(session: Session, team_id: int, parent_job_id: int, spec: TrainingSpec) -> Job:
    """The job a new one continues: a succeeded job of the same team, on the same base model
    and method (and, for adapters, the same adapter shape), whose adapter or weights are still
    stored. Raises InvalidField beside the field at fault."""
    parent = session.scalar(select(Job).where(Job.id == parent_job_id, Job.team_id == team_id))
    if parent is None:
        raise InvalidField(("parent_job_id",), "job not found in this team")
    if parent.state != JobState.succeeded:
        raise InvalidField(
            ("parent_job_id",), f"only a succeeded job can be continued; job {parent.id} is {parent.state.value}"
        )
    if spec.base_model != parent.base_model:
        raise InvalidField(
            ("spec", "base_model"), f"a continued job keeps its parent's base model ({parent.base_model})"
        )
    if spec.method.value != parent.method:
        raise InvalidField(("spec", "method"), f"a continued job keeps its parent's method ({parent.method})")
    if spec.uses_adapter:
        parent_lora = TrainingSpec.model_validate(parent.spec).lora
        for name in _ADAPTER_SHAPE:
            if getattr(spec.lora, name) != getattr(parent_lora, name):
                raise InvalidField(
                    ("spec", "lora", name),
                    f"a continued job keeps its parent's adapter: lora.{name} must be {getattr(parent_lora, name)!r}",
                )
    weights = final_weights(session, parent)
    if weights is None or not blob_store().exists(weights.blob_key):
        raise InvalidField(("parent_job_id",), f"job {parent.id}'s adapter or weights are no longer stored")
    return parent


def submit_job(
    session: Session, access: TeamAccess, submission: JobSubmission, *, sweep_trial: tuple[int, int] | None = None
) -> Job:
    """Check a submission, store the job queued and hand it to the workers. Raises InvalidField
    (beside the field at fault), Forbidden, or Unavailable when the broker is down (the job
    then ends failed, saying so). `sweep_trial` (sweep id, trial number) makes it a sweep's trial."""
    team_id = access.team_for_new(submission.team_id)
    dataset = check_submission(session, submission, team_id)
    spec = submission.spec
    # One name: a job named by its launcher gets that name as its model's suffix, and one given
    # only a suffix (OpenAI's way) is named by it. With neither, the suffix stays empty, as
    # OpenAI leaves it (`ft:<base>:<team>::ftjob-<id>`), and the job's name describes it.
    suffix = submission.suffix or (model_suffix(submission.name) if submission.name else None)
    job = Job(
        team_id=team_id,
        created_by_id=access.user.id,
        name=submission.name or submission.suffix or f"{spec.base_model} · {spec.method.value} · {dataset.name}",
        suffix=suffix,
        base_model=spec.base_model,
        method=spec.method.value,
        spec=spec.model_dump(mode="json"),
        dataset_id=dataset.id,
        validation_dataset_id=submission.validation_dataset_id,
        queue=submission.queue,
        user_metadata=submission.metadata,
        parent_job_id=submission.parent_job_id,
        sweep_id=sweep_trial[0] if sweep_trial else None,
        sweep_trial=sweep_trial[1] if sweep_trial else None,
    )
    session.add(job)
    session.flush()
    created = f"Job created by {access.user.email}"
    if job.parent_job_id is not None:
        created += f", continuing job #{job.parent_job_id} from its {'adapter' if spec.uses_adapter else 'weights'}"
    add_event(session, job, created, state=JobState.queued.value, parent_job_id=job.parent_job_id)
    _enqueue(session, job)
    return job


_BROKER_DOWN = "The job queue (broker) could not be reached; nothing was started. Try again when /healthz is ok."


def _enqueue(session: Session, job: Job) -> None:
    """Commit the queued job and hand it to the workers; Unavailable (and the job failed) when the broker is down."""
    commit_then_enqueue(
        session,
        lambda: enqueue_job(job.id, job.queue, devices_of(job.spec)),
        on_failure=lambda: transition(session, job, JobState.failed, error=_BROKER_DOWN),
        message="the job queue is unreachable; the job was not started",
    )


def resume_job(session: Session, access: TeamAccess, job_id: int) -> Job:
    """Put a cancelled, failed or paused job back in the queue: the same job, whose loss curve
    continues from its last kept checkpoint (from step 0 when it has none, and the event says
    so), with fresh attempts. Conflict for a job in any other state, or whose dataset is gone."""
    job = access.get(session, Job, job_id, write=True)
    if job.state not in RESUMABLE:
        raise Conflict(f"only a cancelled, failed or paused job can be resumed; this one is {job.state.value}")
    if job.dataset_id is None:
        raise Conflict("the job's training dataset was deleted: it cannot be resumed (launch a new job instead)")
    store = blob_store()
    kept = [c for c in checkpoints(session, job.id, newest_first=True) if store.exists(c.blob_key)]
    step = kept[0].step if kept else 0
    where = (
        f"training continues from the checkpoint at step {step}"
        if kept
        else "no checkpoint was kept, so training starts again from step 0"
    )
    try:
        reopen(session, job, step=step, message=f"Resumed by {access.user.email}: {where}")
    except IllegalTransition:  # changed since it was read
        raise Conflict(f"the job is {job.state.value} now; it cannot be resumed") from None
    if (merged := merged_model(session, job)) is not None:
        # Built from a checkpoint that training now goes past: it would be handed out as the final model.
        store.delete(merged.blob_key)
        session.delete(merged)
    _enqueue(session, job)
    return job


def pause_job(session: Session, access: TeamAccess, job_id: int) -> Job:
    """Pause a queued or running job (a running one stops at its next step, with a checkpoint
    there); asking twice is not an error, asking after it has finished is (Conflict)."""
    job = access.get(session, Job, job_id, write=True)
    try:
        request_pause(session, job)
    except IllegalTransition:
        if job.state not in (JobState.pausing, JobState.paused):
            raise Conflict(f"only a queued or running job can be paused; this one is {job.state.value}") from None
    return job


def cancel_job(session: Session, access: TeamAccess, job_id: int) -> Job:
    """Cancel a job; asking twice is not an error, asking after it has finished is (Conflict)."""
    job = access.get(session, Job, job_id, write=True)
    try:
        request_cancel(session, job)
    except IllegalTransition:
        if job.state not in (JobState.cancelling, JobState.cancelled):
            raise Conflict(f"the job has already {job.state.value}") from None
    return job


def estimate_job_memory(
    session: Session, access: TeamAccess, spec: TrainingSpec, dataset_id: int | None = None
) -> dict:
    """GPU memory the job would need, before launching it, on the dataset when one is given (a
    classification dataset trains a classifier: no LM logits), compared with the GPUs the live
    workers have (or common sizes when none reports one); InvalidField for a model not here,
    NotFound for a dataset not the caller's."""
    model = find_model(spec.base_model)
    if model is None:
        raise InvalidField(("spec", "base_model"), f"model {spec.base_model!r} is not in the models directory")
    classes = None
    if dataset_id is not None:
        dataset = access.get(session, Dataset, dataset_id)
        if dataset.format == CLASSIFICATION:
            classes = max(2, len((dataset.stats or {}).get("labels") or {}))
    return estimate_memory(model, spec, classes=classes).as_dict(gpu_targets(live_gpus(session)))
