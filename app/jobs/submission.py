"""Launching and cancelling a job: the checks a submission must pass, the queued row, the
hand-over to the workers. Behind POST /api/jobs, OpenAI's fine-tuning API and the pages."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.chat.catalog import find_model
from app.chat.model_names import model_suffix
from app.config import get_settings
from app.contract.formats import CLASSIFICATION
from app.contract.spec import TrainingSpec
from app.core.errors import Conflict, InvalidField
from app.core.queue import commit_then_enqueue, enqueue_job
from app.core.tables import Dataset, Job, JobState
from app.jobs.memory_estimate import MemoryEstimate, estimate_memory
from app.jobs.states import IllegalTransition, request_cancel, transition
from app.jobs.timeline import add_event

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
    return dataset


def submit_job(session: Session, access: TeamAccess, submission: JobSubmission) -> Job:
    """Check a submission, store the job queued and hand it to the workers. Raises InvalidField
    (beside the field at fault), Forbidden, or Unavailable when the broker is down (the job
    then ends failed, saying so)."""
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
    )
    session.add(job)
    session.flush()
    add_event(session, job, f"Job created by {access.user.email}", state=JobState.queued.value)
    broker_down = "The job queue (broker) could not be reached; nothing was started. Try again when /healthz is ok."
    commit_then_enqueue(
        session,
        lambda: enqueue_job(job.id, job.queue),
        on_failure=lambda: transition(session, job, JobState.failed, error=broker_down),
        message="the job queue is unreachable; the job was not started",
    )
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


def estimate_job_memory(spec: TrainingSpec) -> MemoryEstimate:
    """GPU memory the job would need, before launching it; InvalidField for a model not here."""
    model = find_model(spec.base_model)
    if model is None:
        raise InvalidField(("spec", "base_model"), f"model {spec.base_model!r} is not in the models directory")
    return estimate_memory(model, spec)
