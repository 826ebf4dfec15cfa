"""Reading jobs: the team's list, the ETA, and the loss outlines of the dashboard's sparklines."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.core.tables import Job, JobMetric, JobState, User


def list_jobs(
    session: Session,
    access: TeamAccess,
    *,
    states: list[JobState] | None = None,
    created_by: str | None = None,
    before_id: int | None = None,
    limit: int | None = 200,
) -> list[Job]:
    """The caller's teams' jobs, newest first; `before_id` pages towards older ones. `limit`
    None: all of them."""
    query = access.scope(select(Job), Job).order_by(Job.id.desc())
    if limit is not None:
        query = query.limit(limit)
    if states:
        query = query.where(Job.state.in_(states))
    if created_by:
        query = query.join(User, User.id == Job.created_by_id).where(User.email == created_by.strip().lower())
    if before_id is not None:
        query = query.where(Job.id < before_id)
    return list(session.scalars(query))


def jobs_changed_since(session: Session, team_ids: list[int], since: datetime | None) -> list[Job]:
    """The teams' jobs changed at or after `since`, newest first; with no `since`, the 200 newest."""
    query = select(Job).where(Job.team_id.in_(team_ids)).order_by(Job.id.desc())
    return list(session.scalars(query.where(Job.updated_at >= since) if since is not None else query.limit(200)))


def eta_seconds(job: Job) -> float | None:
    if job.state != JobState.running or not job.total_steps or not job.steps_per_second:
        return None
    return max(0.0, (job.total_steps - job.step) / job.steps_per_second)


def progress(job: Job) -> float | None:
    """step / total_steps, 0 to 1; None before the total is known."""
    return min(1.0, job.step / job.total_steps) if job.total_steps else None


def loss_outlines(session: Session, job_ids: list[int], points: int = 60) -> dict[int, list[tuple[int, float]]]:
    """About `points` train losses of each job, spread evenly over its whole run (always with
    the last one), oldest first: the shape of the curve, for sparklines."""
    if not job_ids:
        return {}
    rank = func.row_number().over(partition_by=JobMetric.job_id, order_by=JobMetric.step).label("rank")
    total = func.count().over(partition_by=JobMetric.job_id).label("total")
    ranked = (
        select(JobMetric.job_id, JobMetric.step, JobMetric.values, rank, total)
        .where(JobMetric.job_id.in_(job_ids), JobMetric.split == "train")
        .subquery()
    )
    stride = case((ranked.c.total > points, ranked.c.total // points), else_=1)
    evenly_spread = ((ranked.c.rank - 1) % stride == 0) | (ranked.c.rank == ranked.c.total)
    rows = session.execute(select(ranked.c.job_id, ranked.c.step, ranked.c["values"]).where(evenly_spread))
    series: dict[int, list[tuple[int, float]]] = {job_id: [] for job_id in job_ids}
    for job_id, step, values in rows:
        if values.get("loss") is not None:
            series[job_id].append((step, values["loss"]))
    return {job_id: sorted(outline) for job_id, outline in series.items()}


def continuations(session: Session, job: Job) -> list[Job]:
    """The jobs that continue `job` (started from its adapter or weights), oldest first."""
    query = select(Job).where(Job.parent_job_id == job.id, Job.team_id == job.team_id).order_by(Job.id)
    return list(session.scalars(query))
