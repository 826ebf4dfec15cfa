"""Jobs compared: the settings that differ between them and their final metrics (the compare
page's table beside the curves)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import AccessDep, SessionDep
from app.jobs.comparison import MAX_JOBS, Row, compare_jobs, compared_samples

router = APIRouter(prefix="/api", tags=["jobs"])


class ComparedJobOut(BaseModel):
    id: int
    name: str
    state: str


class RowOut(BaseModel):
    name: str
    values: list[Any] = Field(description="One per job, in the order of `jobs`; null: not set or not used.")
    better: str | None = Field(None, description='For metrics: "lower" or "higher" is better.')


class ComparisonOut(BaseModel):
    jobs: list[ComparedJobOut]
    differing: list[RowOut] = Field(description="Settings (resolved as the job trained with them) that differ.")
    equal: list[RowOut] = Field(description="Settings every job shares.")
    metrics: list[RowOut] = Field(description="Where each job ended: losses, accuracies, steps, tokens, seconds.")


def _rows(rows: list[Row]) -> list[RowOut]:
    return [RowOut(name=row.name, values=row.values, better=row.better) for row in rows]


@router.get("/compare", response_model=ComparisonOut)
def compare(
    access: AccessDep,
    session: SessionDep,
    jobs: Annotated[list[int], Query(min_length=1, max_length=MAX_JOBS, description="The jobs' ids, in order.")],
) -> ComparisonOut:
    """Jobs side by side: their differing settings, the shared ones, their final metrics."""
    comparison = compare_jobs(session, access, jobs)
    return ComparisonOut(
        jobs=[ComparedJobOut(id=job.id, name=job.name, state=job.state.value) for job in comparison.jobs],
        differing=_rows(comparison.differing),
        equal=_rows(comparison.equal),
        metrics=_rows(comparison.metrics),
    )


class ComparedPromptOut(BaseModel):
    prompt: str
    reference: str
    answers: list[str | None] = Field(description="One per job: its answer at its last evaluation; null: not asked.")
    losses: list[float | None] = Field(description="Each job's loss on the reference answer.")


class ComparedSamplesOut(BaseModel):
    jobs: list[ComparedJobOut]
    prompts: list[ComparedPromptOut]


@router.get("/compare/samples", response_model=ComparedSamplesOut)
def compare_samples(
    access: AccessDep,
    session: SessionDep,
    jobs: Annotated[list[int], Query(min_length=1, max_length=MAX_JOBS, description="The jobs' ids, in order.")],
) -> ComparedSamplesOut:
    """The jobs' answers at their last evaluation to the same held-out prompts, side by side."""
    compared, prompts = compared_samples(session, access, jobs)
    return ComparedSamplesOut(
        jobs=[ComparedJobOut(id=job.id, name=job.name, state=job.state.value) for job in compared],
        prompts=[ComparedPromptOut(**vars(prompt)) for prompt in prompts],
    )
