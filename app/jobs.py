"""Jobs: their states, events and metric points. The data functions behind the jobs API
and the worker; no HTTP here.

State machine (the only place a job's state changes is `transition`)::

    queued ──> running ──> succeeded | failed
      │           │  └───> queued            (its worker died: retried from the last checkpoint)
      │           └──────> cancelling ──> cancelled | failed
      └──> cancelled | failed

Events and metric points share one per-job sequence (`Job.last_seq`), handed out by an
UPDATE of the job's row. That row lock also orders commits, so a stream that has seen
sequence n never later meets a smaller one.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.live import job_channel, ring_after_commit, team_channel
from app.models import Job, JobEvent, JobMetric, JobState, utcnow

Q, R, C, S, F, X = (JobState.queued, JobState.running, JobState.cancelling, JobState.succeeded, JobState.failed,
                    JobState.cancelled)  # fmt: skip
LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    Q: frozenset({R, X, F}),
    R: frozenset({S, F, C, Q}),
    C: frozenset({X, F}),
    S: frozenset(),
    F: frozenset(),
    X: frozenset(),
}

_STATE_MESSAGES = {
    R: "Training started",
    S: "Job succeeded",
    F: "Job failed",
    C: "Cancelling: training stops at the next step",
    X: "Job cancelled",
    Q: "Job queued",
}


class IllegalTransition(RuntimeError):
    def __init__(self, job_id: int, current: JobState, wanted: JobState) -> None:
        super().__init__(f"job {job_id} cannot go from {current.value} to {wanted.value}")
        self.current = current
        self.wanted = wanted


def _allocate_seq(session: Session, job_id: int, count: int) -> int:
    """Reserve `count` sequence numbers for a job; returns the first."""
    last = session.execute(
        update(Job).where(Job.id == job_id).values(last_seq=Job.last_seq + count).returning(Job.last_seq)
    ).scalar_one()
    return last - count + 1


def add_event(session: Session, job: Job, message: str, *, level: str = "info", **data: Any) -> JobEvent:
    seq = _allocate_seq(session, job.id, 1)
    row = JobEvent(job_id=job.id, seq=seq, level=level, message=message, data=data)
    session.add(row)
    ring_after_commit(session, job_channel(job.id))
    return row


def transition(session: Session, job: Job, to: JobState, *, message: str | None = None, error: str | None = None,
               **fields: Any) -> Job:  # fmt: skip
    """Move a job to state `to`, or raise IllegalTransition.

    A compare-and-set on the current state: if another process changed the job since it was
    read (a cancel racing a finish, two workers claiming one job), this one loses cleanly.
    Every change is also a job event."""
    current = job.state
    if to not in LEGAL_TRANSITIONS[current]:
        raise IllegalTransition(job.id, current, to)
    now = utcnow()
    values: dict[str, Any] = {"state": to, "updated_at": now, **fields}
    if to == R and job.started_at is None:
        values["started_at"] = now
    if to.is_terminal:
        values["finished_at"] = now
        values["steps_per_second"] = None
    if error is not None:
        values["error"] = error
    changed = session.execute(update(Job).where(Job.id == job.id, Job.state == current).values(**values)).rowcount
    if changed != 1:
        session.refresh(job)
        raise IllegalTransition(job.id, job.state, to)
    session.refresh(job)
    text = message or _STATE_MESSAGES[to]
    add_event(session, job, text, level="error" if to == F else "info", state=to.value,
              **({"error": error} if error else {}))  # fmt: skip
    ring_after_commit(session, team_channel(job.team_id))
    return job


def request_cancel(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    if job.state == Q:
        return transition(session, job, X, message="Job cancelled before it started")
    if job.state == R:
        return transition(session, job, C)
    raise IllegalTransition(job.id, job.state, X)


@dataclass(frozen=True)
class MetricPoint:
    step: int
    split: str  # "train" or "eval"
    values: Mapping[str, float]


def _clean(values: Mapping[str, Any]) -> dict[str, float]:
    """JSON cannot carry NaN or infinity; a diverged loss is kept as null."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, (int, float)):
            out[key] = float(value) if math.isfinite(value) else None
    return out


def add_metrics(session: Session, job: Job, points: Iterable[MetricPoint]) -> int:
    """Append metric points; a (split, step) the job already has is skipped, so a retried
    job never duplicates points. Returns how many were added."""
    points = list({(p.split, p.step): p for p in points}.values())
    if not points:
        return 0
    existing = set(
        session.execute(
            select(JobMetric.split, JobMetric.step).where(
                JobMetric.job_id == job.id, JobMetric.step.in_({p.step for p in points})
            )
        ).all()
    )
    fresh = sorted((p for p in points if (p.split, p.step) not in existing), key=lambda p: (p.step, p.split))
    if not fresh:
        return 0
    first = _allocate_seq(session, job.id, len(fresh))
    now = utcnow()
    rows = [
        {"job_id": job.id, "seq": first + i, "split": p.split, "step": p.step, "values": _clean(p.values),
         "created_at": now}
        for i, p in enumerate(fresh)
    ]  # fmt: skip
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(JobMetric).values(rows).on_conflict_do_nothing())
    latest: dict[str, Any] = {"updated_at": now}
    for point in fresh:
        if point.split == "train" and "loss" in point.values:
            latest["train_loss"] = _clean(point.values)["loss"]
        if point.split == "eval" and "eval_loss" in point.values:
            latest["eval_loss"] = _clean(point.values)["eval_loss"]
        if "epoch" in point.values:
            latest["epoch"] = float(point.values["epoch"])
        if point.values.get("tokens_seen") is not None:
            latest["trained_tokens"] = int(point.values["tokens_seen"])
    session.execute(update(Job).where(Job.id == job.id).values(**latest))
    ring_after_commit(session, job_channel(job.id))
    return len(fresh)


def stream_items_after(session: Session, job_id: int, after_seq: int, limit: int = 1000) -> list[JobEvent | JobMetric]:
    """Events and metric points with a sequence number above `after_seq`, in order."""
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after_seq).order_by(JobEvent.seq).limit(limit)
    ).all()
    metrics = session.scalars(
        select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.seq > after_seq).order_by(JobMetric.seq)
        .limit(limit)
    ).all()  # fmt: skip
    return sorted([*events, *metrics], key=lambda item: item.seq)[:limit]


def eta_seconds(job: Job) -> float | None:
    if job.state != R or not job.total_steps or not job.steps_per_second:
        return None
    return max(0.0, (job.total_steps - job.step) / job.steps_per_second)


# ---- workers that vanish ---------------------------------------------------------------------


def worker_identity(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def _owner_is_dead_here(owner: str | None) -> bool:
    """True when the owner was a process on this host that no longer runs: gone, or a zombie
    (killed, its parent gone too, and not yet reaped; in a container nobody may ever reap it)."""
    import os
    from pathlib import Path

    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        # /proc/<pid>/stat: "pid (name) state ..."; the name may hold spaces, the state follows the last ')'.
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def is_orphaned(job: Job, *, stale_after_s: float) -> bool:
    """A running (or cancelling) job whose worker is gone: a dead process on this host, or
    no heartbeat for `stale_after_s`."""
    if job.state not in (R, C):
        return False
    if _owner_is_dead_here(job.worker):
        return True
    last = job.heartbeat_at or job.started_at or job.updated_at
    return utcnow() - last > timedelta(seconds=stale_after_s)


def recover_orphan(session: Session, job: Job, *, max_attempts: int) -> bool:
    """Requeue (or, after too many crashes, fail) a job whose worker is gone. Returns True
    when the job should be sent to the queue again. Safe to race: the transition is a
    compare-and-set, so of two reapers only one acts."""
    if job.state == C:
        transition(session, job, X, message="Job cancelled (its worker stopped while cancelling)")
        return False
    where = f"at step {job.step}" if job.step else "before the first step"
    crashes = job.crashes + 1
    if crashes >= max_attempts:
        transition(session, job, F, crashes=crashes,
                   error=f"The worker running this job stopped {crashes} times ({where} the last time); giving up. "
                         "Check the worker's logs, e.g. for running out of memory.")  # fmt: skip
        return False
    transition(session, job, Q, worker=None, heartbeat_at=None, steps_per_second=None, crashes=crashes,
               message=f"Worker lost {where}; the job will resume from its last checkpoint "
                       f"(crash {crashes} of {max_attempts} allowed)")  # fmt: skip
    return True


def find_orphans(session: Session, *, stale_after_s: float) -> list[Job]:
    candidates = session.scalars(select(Job).where(Job.state.in_([R, C]))).all()
    return [job for job in candidates if is_orphaned(job, stale_after_s=stale_after_s)]


def reap_orphans() -> list[int]:
    """Requeue the jobs whose worker is gone (or fail those that crashed too often). Run by
    every worker when it starts and periodically by the web app. Returns the requeued ids."""
    from app.config import get_settings
    from app.db import session_scope
    from app.queue import enqueue_job

    settings = get_settings()
    requeue: list[tuple[int, str]] = []
    with session_scope() as session:
        for job in find_orphans(session, stale_after_s=settings.worker_stale_after_s):
            try:
                if recover_orphan(session, job, max_attempts=settings.job_max_attempts):
                    requeue.append((job.id, job.queue))
            except IllegalTransition:
                continue  # someone else got there first
    for job_id, queue in requeue:
        enqueue_job(job_id, queue)
    return [job_id for job_id, _ in requeue]


def loss_outlines(session: Session, job_ids: list[int], points: int = 60) -> dict[int, list[tuple[int, float]]]:
    """About `points` train losses of each job, spread evenly over its whole run (always with
    the last one), oldest first: the shape of the curve, for sparklines."""
    from sqlalchemy import case, func

    if not job_ids:
        return {}
    ranked = (
        select(JobMetric.job_id, JobMetric.step, JobMetric.values,
               func.row_number().over(partition_by=JobMetric.job_id, order_by=JobMetric.step).label("rank"),
               func.count().over(partition_by=JobMetric.job_id).label("total"))
        .where(JobMetric.job_id.in_(job_ids), JobMetric.split == "train")
        .subquery()
    )  # fmt: skip
    stride = case((ranked.c.total > points, ranked.c.total // points), else_=1)
    rows = session.execute(
        select(ranked.c.job_id, ranked.c.step, ranked.c["values"])
        .where(((ranked.c.rank - 1) % stride == 0) | (ranked.c.rank == ranked.c.total))
    )  # fmt: skip
    series: dict[int, list[tuple[int, float]]] = {job_id: [] for job_id in job_ids}
    for job_id, step, values in rows:
        if values.get("loss") is not None:
            series[job_id].append((step, values["loss"]))
    return {job_id: sorted(outline) for job_id, outline in series.items()}