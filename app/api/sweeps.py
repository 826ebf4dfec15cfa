"""Hyperparameter sweeps: launch, list, inspect (trials ranked by the metric, the best marked), cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from app.api.deps import AccessDep, SessionDep
from app.core.tables import Sweep, SweepState
from app.sweeps.sweeps import SweepSubmission, SweepView, cancel_sweep, create_sweep, list_sweeps, sweep_view

router = APIRouter(prefix="/api", tags=["sweeps"])


class TrialOut(BaseModel):
    number: int
    values: dict[str, Any] = Field(description="This trial's parameter values, by spec path")
    job_id: int | None = Field(description="None until the trial is launched")
    status: str = Field(description="pending, queued, running, succeeded, failed, cancelled or pruned")
    value: float | None = Field(description="The sweep's metric, latest")
    pruned_at_step: int | None
    best: bool


class SweepOut(BaseModel):
    id: int
    name: str
    team_id: int
    state: SweepState
    strategy: str
    space: dict
    metric: str
    direction: str
    max_concurrent: int
    prune: bool
    trial_count: int
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, sweep: Sweep) -> SweepOut:
        return cls(
            **{name: getattr(sweep, name) for name in cls.model_fields if name != "trial_count"},
            trial_count=len(sweep.trials),
        )


class SweepDetail(SweepOut):
    base: dict = Field(description="The job submission every trial starts from")
    counts: dict[str, int] = Field(description="Trials by status")
    best_trial: int | None
    trials: list[TrialOut] = Field(description="Sorted by the metric, best first; trials without a value last")

    @classmethod
    def of_view(cls, view: SweepView) -> SweepDetail:
        best = view.best
        return cls(
            **SweepOut.of(view.sweep).model_dump(),
            base=view.sweep.submission,
            counts=view.counts(),
            best_trial=best.number if best else None,
            trials=[
                TrialOut(
                    number=row.number,
                    values=row.values,
                    job_id=row.job.id if row.job else None,
                    status=row.status,
                    value=row.value,
                    pruned_at_step=row.job.pruned_at_step if row.job else None,
                    best=row.best,
                )
                for row in view.trials
            ],
        )


@router.post("/sweeps", response_model=SweepDetail, status_code=status.HTTP_201_CREATED)
def create(body: SweepSubmission, access: AccessDep, session: SessionDep) -> SweepDetail:
    """Every trial is checked as `POST /api/jobs` checks a job; the first `max_concurrent` start at once."""
    sweep = create_sweep(session, access, body)
    return SweepDetail.of_view(sweep_view(session, access, sweep.id))


@router.get("/sweeps", response_model=list[SweepOut])
def list_all(access: AccessDep, session: SessionDep) -> list[SweepOut]:
    return [SweepOut.of(sweep) for sweep in list_sweeps(session, access)]


@router.get("/sweeps/{sweep_id}", response_model=SweepDetail)
def get(sweep_id: int, access: AccessDep, session: SessionDep) -> SweepDetail:
    return SweepDetail.of_view(sweep_view(session, access, sweep_id))


@router.post("/sweeps/{sweep_id}/cancel", response_model=SweepDetail)
def cancel(sweep_id: int, access: AccessDep, session: SessionDep) -> SweepDetail:
    """No further trial starts; queued and running trials are cancelled."""
    cancel_sweep(session, access, sweep_id)
    return SweepDetail.of_view(sweep_view(session, access, sweep_id))
