"""What a job's model answers: its sample answers at each evaluation, and evaluations of a
finished job on other datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.bodies import EvaluationIn, EvaluationOut, SamplesOut
from app.api.deps import AccessDep, SessionDep
from app.core.tables import Job, JobSamples
from app.jobs import evaluations, timeline

router = APIRouter(prefix="/api", tags=["jobs"])


@router.get("/jobs/{job_id}/samples", response_model=list[SamplesOut])
def list_samples(
    job_id: int,
    access: AccessDep,
    session: SessionDep,
    kind: Annotated[str | None, Query(pattern="^(generation|base|misclassified)$")] = None,
) -> list[JobSamples]:
    """The model's answers at each evaluation, in step order: a language model's answers to the
    same held-out prompts (`generation`, with the reference answer and its loss), the base model's
    (`base`, once), or a classifier's misclassified evaluation rows (`misclassified`)."""
    return timeline.samples(session, access.get(session, Job, job_id), kind=kind)


@router.post("/jobs/{job_id}/evaluations", response_model=EvaluationOut, status_code=status.HTTP_202_ACCEPTED)
def create_evaluation(job_id: int, body: EvaluationIn, access: AccessDep, session: SessionDep) -> EvaluationOut:
    """Evaluate the succeeded job's final weights on another dataset of its team, on a worker of
    the job's queue; the result lands in `GET /api/jobs/{id}/evaluations`."""
    return EvaluationOut.of(evaluations.request_evaluation(session, access, job_id, body.dataset_id))


@router.get("/jobs/{job_id}/evaluations", response_model=list[EvaluationOut])
def list_evaluations(job_id: int, access: AccessDep, session: SessionDep) -> list[EvaluationOut]:
    return [EvaluationOut.of(row) for row in evaluations.evaluations(session, access.get(session, Job, job_id))]
