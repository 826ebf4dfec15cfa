"""Evaluating a finished job on another dataset (POST /api/jobs/{id}/evaluations): a worker of
the job's queue loads the base model with the job's final weights, evaluates them on the dataset
the same way training evaluated, and stores the metrics in the evaluation's row. Progress and the
outcome are job events too, with `data.evaluation` the evaluation's id."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.accounts.access import TeamAccess
from app.core.errors import Conflict, InvalidField
from app.core.queue import commit_then_enqueue, enqueue_evaluation
from app.core.tables import Dataset, EvaluationState, Job, JobEvaluation, JobState, utcnow
from app.jobs.artifacts import final_weights
from app.jobs.timeline import add_event


def request_evaluation(session: Session, access: TeamAccess, job_id: int, dataset_id: int) -> JobEvaluation:
    """Queue an evaluation of the job's final weights on `dataset_id`, a dataset of the job's team.
    Conflict when the job has not succeeded or left no weights."""
    job = access.get(session, Job, job_id, write=True)
    dataset = access.find(session, Dataset, dataset_id)
    if dataset is None or dataset.team_id != job.team_id:
        raise InvalidField(("dataset_id",), "no such dataset in the job's team")
    if job.state != JobState.succeeded:
        raise Conflict(f"the job is {job.state.value}: evaluate it once it has succeeded")
    if final_weights(session, job) is None:
        raise Conflict("the job left no weights to evaluate")
    evaluation = JobEvaluation(job_id=job.id, dataset_id=dataset.id)
    session.add(evaluation)
    session.flush()
    add_event(
        session,
        job,
        f"Evaluation on {dataset.name} requested by {access.user.email}",
        evaluation=evaluation.id,
        evaluation_state="queued",
    )

    def could_not_queue() -> None:
        evaluation.state, evaluation.finished_at = EvaluationState.failed, utcnow()
        evaluation.error = "the broker was unreachable"
        add_event(session, job, "The evaluation could not be queued: the broker is unreachable", level="error")

    commit_then_enqueue(
        session,
        lambda: enqueue_evaluation(evaluation.id, job.queue),
        on_failure=could_not_queue,
        message="the job queue is unreachable; try again later",
    )
    return evaluation


def evaluations(session: Session, job: Job) -> list[JobEvaluation]:
    """The job's evaluations on other datasets, newest first."""
    query = select(JobEvaluation).where(JobEvaluation.job_id == job.id).options(selectinload(JobEvaluation.dataset))
    return list(session.scalars(query.order_by(JobEvaluation.id.desc())))
