"""The models chat can talk to, and their names (as in OpenAI's API).

- A base model is named as the catalog names it: `tiny-llama`, `org/model`.
- A succeeded job's model: `ft:<base>:<team>:<suffix>:ftjob-<job id>` (OpenAI's pattern; the
  suffix may be empty).
- A checkpoint of any job, while it is kept: the same plus `:ckpt-step-<step>`.

`resolve` turns a name back into what a worker loads, within the caller's teams: a name that
does not match exactly, or another team's job, is not found, like a missing one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.accounts.teams import teams_by_id
from app.chat import catalog
from app.contract.formats import CLASSIFICATION, TASK_FORMATS
from app.core.tables import Artifact, ArtifactKind, Dataset, Job, JobState, Team
from app.jobs.artifacts import FINAL_KINDS, final_weights

_FINE_TUNED = re.compile(r"^ft:.+:ftjob-(?P<job>\d{1,18})(?::ckpt-step-(?P<step>\d{1,18}))?$")


class ModelNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The model {name!r} does not exist or you do not have access to it.")


def team_slug(team_name: str) -> str:
    """A team name as it appears in model names: lower case, no spaces or colons."""
    return re.sub(r"[^a-z0-9._-]+", "-", team_name.lower()).strip("-") or "team"


def model_suffix(job_name: str) -> str | None:
    """A job's name as the suffix of its model's name (what OpenAI's `suffix` allows: letters,
    digits, '.', '_', '-', at most 64), so that a job has one name: "support bot v3" →
    `ft:<base>:<team>:support-bot-v3:ftjob-<id>`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", job_name).strip("-.")[:64].rstrip("-.") or None


def job_public_id(job_id: int) -> str:
    return f"ftjob-{job_id}"


def _job_model_prefix(job: Job, team_name: str) -> str:
    return f"ft:{job.base_model}:{team_slug(team_name)}:{job.suffix or ''}:{job_public_id(job.id)}"


def fine_tuned_model_id(job: Job, team_name: str) -> str | None:
    """The name of a job's trained model; None until the job has succeeded."""
    return _job_model_prefix(job, team_name) if job.state == JobState.succeeded else None


def checkpoint_model_id(job: Job, team_name: str, step: int) -> str:
    return f"{_job_model_prefix(job, team_name)}:ckpt-step-{step}"


def finished_job_model(session: Session, job: Job, team_name: str) -> str | None:
    """The model a finished job left to chat with: its trained model, or for a cancelled or
    failed job its latest checkpoint. None when it left none."""
    weights = final_weights(session, job) if job.state.is_terminal else None
    if weights is None:
        return None
    if weights.kind in FINAL_KINDS:
        return fine_tuned_model_id(job, team_name)
    return checkpoint_model_id(job, team_name, weights.step)


@dataclass(frozen=True)
class ChatTarget:
    model: str  # the name asked for
    base_model: str
    weights: Artifact | None  # the fine-tuned weights, loaded on (adapter) or instead of (model) the base
    team_id: int | None  # the team whose job trained the weights; None for a base model


def resolve(session: Session, access: TeamAccess, name: str) -> ChatTarget:
    """What to load for the model `name`; raises ModelNotFound."""
    match = _FINE_TUNED.fullmatch(name)
    if match is None:
        if catalog.find_model(name) is None:
            raise ModelNotFound(name)
        return ChatTarget(model=name, base_model=name, weights=None, team_id=None)
    job = access.find(session, Job, int(match["job"]))
    if job is None:
        raise ModelNotFound(name)
    team_name = session.get(Team, job.team_id).name
    weights_query = select(Artifact).where(Artifact.job_id == job.id)
    if match["step"] is None:
        expected = fine_tuned_model_id(job, team_name)
        weights = session.scalar(weights_query.where(Artifact.kind.in_(FINAL_KINDS)))
    else:
        step = int(match["step"])
        expected = checkpoint_model_id(job, team_name, step)
        weights = session.scalar(weights_query.where(Artifact.kind == ArtifactKind.checkpoint, Artifact.step == step))
    if name != expected or weights is None:
        raise ModelNotFound(name)
    return ChatTarget(model=name, base_model=job.base_model, weights=weights, team_id=job.team_id)


_FINISHED = (JobState.succeeded, JobState.cancelled, JobState.failed)


def is_classifier(session: Session, job: Job) -> bool:
    """Whether the job trains a text classifier (its dataset has text+label rows): its model
    labels text, it does not chat."""
    return (
        job.dataset_id is not None
        and session.scalar(select(Dataset.format).where(Dataset.id == job.dataset_id)) == CLASSIFICATION
    )


def job_task(session: Session, job: Job) -> str | None:
    """The task format a job trained a tagger, question answerer or encoder-decoder on (its
    dataset's format: token_classification, question_answering, seq2seq), else None."""
    if job.dataset_id is None:
        return None
    found = session.scalar(select(Dataset.format).where(Dataset.id == job.dataset_id))
    return found if found in TASK_FORMATS else None


@dataclass(frozen=True)
class FinishedModel:
    job: Job
    model: str  # its name, as chat and classification take it
    checkpoint: bool  # the job did not succeed: the model is its last checkpoint
    classifier: bool  # it labels text (classify), it does not chat
    task: str | None = None  # a task format: it tags, answers from a context or writes a target (predict)


def finished_job_models(session: Session, access: TeamAccess, limit: int = 200) -> list[FinishedModel]:
    """The caller's finished jobs that left a model to try, newest first."""
    names = {team.id: team.name for team in teams_by_id(session, access.team_ids)}
    query = (
        access.scope(select(Job, Dataset.format), Job)
        .outerjoin(Dataset, Dataset.id == Job.dataset_id)
        .where(Job.state.in_(_FINISHED))
        .order_by(Job.id.desc())
        .limit(limit)
    )
    found = []
    for job, dataset_format in session.execute(query):
        model = finished_job_model(session, job, names[job.team_id])
        if model is not None:
            task = dataset_format if dataset_format in TASK_FORMATS else None
            found.append(
                FinishedModel(job, model, job.state != JobState.succeeded, dataset_format == CLASSIFICATION, task)
            )
    return found


def fine_tuned_job(session: Session, access: TeamAccess, name: str) -> Job | None:
    """The succeeded job of the caller's teams that the fine-tuned model `name` is
    (`ft:...:ftjob-<id>`, no checkpoint): what OpenAI's API fine-tunes further when it is given
    as the base model. None when `name` is no such name (a base model's, say); ModelNotFound
    for one that names no job of the caller's teams, or not exactly."""
    match = _FINE_TUNED.fullmatch(name)
    if match is None or match["step"] is not None:
        return None
    job = access.find(session, Job, int(match["job"]))
    if job is None or fine_tuned_model_id(job, session.get(Team, job.team_id).name) != name:
        raise ModelNotFound(name)
    return job
