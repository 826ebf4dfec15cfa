"""Live worker processes as the database sees them (kept fresh by each worker's heartbeat)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.core.tables import WorkerProcess, utcnow


def live_workers_query():
    cutoff = utcnow() - timedelta(seconds=get_settings().worker_stale_after_s)
    return select(WorkerProcess).where(WorkerProcess.last_seen_at >= cutoff)


def live_worker_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(live_workers_query().subquery())) or 0


def serves_queue(session: Session, queue: str) -> bool:
    """Whether a live worker takes tasks from `queue`."""
    return any(queue in worker.queues.split(",") for worker in session.scalars(live_workers_query()))
