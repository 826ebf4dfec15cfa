"""Live worker processes as the database sees them (kept fresh by each worker's heartbeat)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.core.tables import WorkerProcess, utcnow


def live_workers_query():
    cutoff = utcnow() - timedelta(seconds=get_settings().worker_stale_after_s)
    return select(WorkerProcess).where(WorkerProcess.last_seen_at >= cutoff)


def live_worker_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(live_workers_query().subquery())) or 0


def served_queues(session: Session) -> Counter[str]:
    """The queues live workers take tasks from, each with how many live workers take from it
    (a job on several nodes needs that many at once)."""
    return Counter(
        queue for worker in session.scalars(live_workers_query()) for queue in set(worker.queues.split(",")) if queue
    )


def serves_queue(session: Session, queue: str) -> bool:
    """Whether a live worker takes tasks from `queue`."""
    return queue in served_queues(session)


def set_current_job(session: Session, *, hostname: str, pids: tuple[int, ...], job_id: int | None) -> None:
    """Record on the heartbeat row of the worker (on `hostname`, one of `pids`) the job it now
    runs, and since when; `job_id=None` when it has finished."""
    session.execute(
        update(WorkerProcess)
        .where(WorkerProcess.hostname == hostname, WorkerProcess.pid.in_(pids))
        .values(current_job_id=job_id, current_job_since=utcnow() if job_id is not None else None)
    )
