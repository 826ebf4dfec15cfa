"""Creating, listing, showing and cancelling sweeps. Behind /api/sweeps and the sweep pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.core.errors import Conflict, InvalidField
from app.core.tables import Job, JobState, Sweep, SweepState, utcnow
from app.jobs.states import IllegalTransition, request_cancel
from app.jobs.submission import JobSubmission, check_submission
from app.sweeps.scheduling import advance_sweep, locked_sweep
from app.sweeps.space import SearchSpace, trial_spec

MAX_CONCURRENT = 16
METRICS = ("eval_loss", "train_loss")


class SweepSubmission(BaseModel):
    """A sweep: the job every trial starts from, what to vary, and how trials are judged."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(None, max_length=120, description="The sweep's name (default: model · dataset).")
    base: JobSubmission = Field(description="The job every trial starts from, as POST /api/jobs takes it.")
    space: SearchSpace
    metric: Literal["eval_loss", "train_loss"] | None = Field(
        None, description="What ranks the trials (default: eval_loss when there is evaluation data, else train_loss)."
    )
    direction: Literal["minimize", "maximize"] = "minimize"
    max_concurrent: int = Field(2, ge=1, le=MAX_CONCURRENT, description="Most trials queued or running at once.")
    prune: bool = Field(False, description="Stop trials doing worse than the median of the finished ones.")


def create_sweep(session: Session, access: TeamAccess, submission: SweepSubmission) -> Sweep:
    """Check every trial as a job submission would be checked, store the sweep and launch its
    first trials. InvalidField beside the field at fault; nothing is stored then."""
    base = submission.base
    team_id = access.team_for_new(base.team_id)
    trials = submission.space.expand()
    base_spec = base.spec.model_dump(mode="json")
    dataset = None
    for number, values in enumerate(trials):
        spec = trial_spec(base_spec, values, number)
        dataset = check_submission(session, base.model_copy(update={"spec": spec}), team_id)
    has_eval = base.validation_dataset_id is not None or base.spec.eval_split > 0
    metric = submission.metric or ("eval_loss" if has_eval else "train_loss")
    if metric == "eval_loss" and not has_eval:
        raise InvalidField(("metric",), "eval_loss needs evaluation: give a validation dataset or an eval split")
    sweep = Sweep(
        team_id=team_id,
        created_by_id=access.user.id,
        name=submission.name or f"{base.spec.base_model} · {dataset.name}",
        submission=base.model_copy(update={"team_id": team_id}).model_dump(mode="json"),
        strategy=submission.space.strategy,
        space=submission.space.model_dump(mode="json", exclude_none=True),
        seed=submission.space.seed if submission.space.strategy == "random" else None,
        trials=trials,
        metric=metric,
        direction=submission.direction,
        max_concurrent=submission.max_concurrent,
        prune=submission.prune,
    )
    session.add(sweep)
    session.commit()
    advance_sweep(session, sweep.id)
    session.refresh(sweep)
    return sweep


def list_sweeps(session: Session, access: TeamAccess, *, limit: int = 100) -> list[Sweep]:
    return list(session.scalars(access.scope(select(Sweep), Sweep).order_by(Sweep.id.desc()).limit(limit)))


def cancel_sweep(session: Session, access: TeamAccess, sweep_id: int) -> Sweep:
    """Stop a sweep: no trial is launched any more, and its queued and running trials are
    cancelled. Asking twice is not an error; a finished sweep answers Conflict."""
    sweep = access.get(session, Sweep, sweep_id, write=True)
    if sweep.state == SweepState.finished:
        raise Conflict("the sweep has already finished")
    sweep = locked_sweep(session, sweep.id)
    if sweep.state == SweepState.running:
        sweep.state, sweep.finished_at = SweepState.cancelled, utcnow()
    for job in session.scalars(select(Job).where(Job.sweep_id == sweep.id)):
        try:
            request_cancel(session, job)
        except IllegalTransition:
            continue  # ended (or being cancelled) already
    session.commit()
    return sweep


@dataclass
class TrialRow:
    number: int
    values: dict[str, Any]
    job: Job | None  # None: not launched yet
    value: float | None = None  # the sweep's metric, latest
    best: bool = False

    @property
    def status(self) -> str:
        if self.job is None:
            return "pending"
        if self.job.pruned_at_step is not None and self.job.state in (JobState.cancelling, JobState.cancelled):
            return "pruned"
        return self.job.state.value


@dataclass
class SweepView:
    """A sweep as its page and API show it: trials sorted by the metric (best first, then the
    ones without a value), the best finished trial marked."""

    sweep: Sweep
    trials: list[TrialRow] = field(default_factory=list)

    @property
    def best(self) -> TrialRow | None:
        return next((row for row in self.trials if row.best), None)

    @property
    def parameters(self) -> list[str]:
        return list(self.sweep.trials[0]) if self.sweep.trials else []

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.trials:
            out[row.status] = out.get(row.status, 0) + 1
        return out


def sweep_view(session: Session, access: TeamAccess, sweep_id: int) -> SweepView:
    sweep = access.get(session, Sweep, sweep_id)
    jobs = {job.sweep_trial: job for job in session.scalars(select(Job).where(Job.sweep_id == sweep.id))}
    rows = []
    for number, values in enumerate(sweep.trials):
        job = jobs.get(number)
        value = None if job is None else (job.eval_loss if sweep.metric == "eval_loss" else job.train_loss)
        rows.append(TrialRow(number, values, job, value))
    sign = 1 if sweep.direction == "minimize" else -1
    rows.sort(key=lambda row: (row.value is None, sign * (row.value or 0.0), row.number))
    finished = [row for row in rows if row.status == "succeeded" and row.value is not None]
    if finished:
        finished[0].best = True
    return SweepView(sweep, rows)
