"""Stopping a sweep's trial early when it is doing worse than the others did at the same step.

The rule is Optuna's `MedianPruner`: at each point a trial reports (an evaluation for
`eval_loss`, a logging step for `train_loss`), its best value so far is compared with the
median of the best values that the sweep's finished trials had reached by that step; worse
than the median, it is pruned. Nothing is decided before `STARTUP_TRIALS` trials have
finished, nor before `WARMUP_STEPS`.

It is written here, over the metric points the database already holds, rather than with
Optuna itself: the decision is these few lines, it must be rebuilt from the database on every
point anyway (trials run in other processes), and Optuna would add numpy, its own SQLAlchemy
and Alembic pins and a ~1 s import to the web app for it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.tables import Job, JobMetric, JobState, Sweep, SweepState
from app.jobs.states import transition

STARTUP_TRIALS = 2  # finished trials needed before any is pruned
WARMUP_STEPS = 1  # a trial's points before this step are never judged

Points = list[tuple[int, float]]  # (step, value), by step


@dataclass(frozen=True)
class Verdict:
    step: int
    value: float  # the trial's best so far at `step`
    median: float  # of the finished trials' best values by `step`


def _best(values: list[float], direction: str) -> float:
    return min(values) if direction == "minimize" else max(values)


def median_verdict(trial: Points, finished: list[Points], *, direction: str) -> Verdict | None:
    """A Verdict when `trial`, at its latest point, is worse than the median of `finished` at
    that step; None when it may go on (or when there is not yet enough to judge by)."""
    if not trial or trial[-1][0] < WARMUP_STEPS:
        return None
    step = trial[-1][0]
    value = _best([v for _, v in trial], direction)
    peers = [_best(reached, direction) for points in finished if (reached := [v for s, v in points if s <= step])]
    if len(peers) < STARTUP_TRIALS:
        return None
    median = statistics.median(peers)
    worse = value > median if direction == "minimize" else value < median
    return Verdict(step, value, median) if worse else None


def _split(metric: str) -> str:
    return "eval" if metric == "eval_loss" else "train"


def _points(session: Session, job_ids: list[int], metric: str) -> dict[int, Points]:
    split, key = _split(metric), ("eval_loss" if metric == "eval_loss" else "loss")
    rows = session.execute(
        select(JobMetric.job_id, JobMetric.step, JobMetric.values)
        # Step 0 is the base model's baseline evaluation, the same for every trial: not a trial's own.
        .where(JobMetric.job_id.in_(job_ids), JobMetric.split == split, JobMetric.step > 0)
        .order_by(JobMetric.job_id, JobMetric.step)
    ).all()
    out: dict[int, Points] = {job_id: [] for job_id in job_ids}
    for job_id, step, values in rows:
        value = values.get(key)
        if isinstance(value, (int, float)):
            out[job_id].append((step, float(value)))
    return out


def judge_trial(session: Session, job: Job, splits: set[str]) -> Verdict | None:
    """Prune `job` (a running trial of a sweep with pruning on) when the median rule says so,
    after points of `splits` ("train", "eval") were written: it is cancelled as a user's cancel
    does, with an event saying why, and its `pruned_at_step` set. Returns the verdict when it was
    pruned."""
    if job.sweep_id is None or job.state != JobState.running:
        return None
    sweep = session.get(Sweep, job.sweep_id)
    if sweep is None or not sweep.prune or sweep.state != SweepState.running or _split(sweep.metric) not in splits:
        return None
    finished_ids = list(
        session.scalars(
            select(Job.id).where(Job.sweep_id == sweep.id, Job.state == JobState.succeeded, Job.id != job.id)
        )
    )
    points = _points(session, [job.id, *finished_ids], sweep.metric)
    verdict = median_verdict(points[job.id], [points[i] for i in finished_ids], direction=sweep.direction)
    if verdict is None:
        return None
    worse = "above" if sweep.direction == "minimize" else "below"
    message = (
        f"Pruned by the sweep at step {verdict.step}: {sweep.metric} {verdict.value:.4g} is {worse} the median "
        f"{verdict.median:.4g} of the finished trials at that step; training stops at the next step"
    )
    transition(session, job, JobState.cancelling, message=message, record_step=True, pruned_at_step=verdict.step)
    return verdict
