"""A job's timeline: its events, metric points and sample answers, which share one per-job sequence number.

The sequence (`Job.last_seq`) is handed out by an UPDATE of the job's row. That row lock also
orders commits, so a stream that has seen sequence n never later meets a smaller one; the
number is the SSE event id of the live streams.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core.live import job_channel, ring_after_commit
from app.core.tables import Job, JobEvent, JobMetric, JobSamples, utcnow
from app.webhooks.events import record_job_event


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


@dataclass(frozen=True)
class MetricPoint:
    step: int
    split: str  # "train" or "eval"
    values: Mapping[str, float]


def _clean(values: Mapping[str, Any]) -> dict[str, float | None]:
    """JSON cannot carry NaN or infinity; a diverged loss is kept as null."""
    out: dict[str, float | None] = {}
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
        {
            "job_id": job.id,
            "seq": first + i,
            "split": p.split,
            "step": p.step,
            "values": _clean(p.values),
            "created_at": now,
        }
        for i, p in enumerate(fresh)
    ]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(JobMetric).values(rows).on_conflict_do_nothing())
    latest: dict[str, Any] = {"updated_at": now}
    for point in fresh:
        if point.split == "train" and "loss" in point.values:
            latest["train_loss"] = _clean(point.values)["loss"]
        if point.split == "eval" and "eval_loss" in point.values:
            latest["eval_loss"] = _clean(point.values)["eval_loss"]
        if "epoch" in point.values:
            # The worker writes the epoch with every step; a point flushed after the row moved on
            # to a later step must not set it back.
            latest["epoch"] = case((Job.step > point.step, Job.epoch), else_=float(point.values["epoch"]))
        if point.values.get("tokens_seen") is not None:
            latest["trained_tokens"] = int(point.values["tokens_seen"])
    session.execute(update(Job).where(Job.id == job.id).values(**latest))
    for point in fresh:
        if point.split == "eval":
            record_job_event(
                session,
                team_id=job.team_id,
                job_id=job.id,
                event_type="fine_tuning.job.eval",
                step=point.step,
                metrics=_clean(point.values),
            )
    ring_after_commit(session, job_channel(job.id))
    return len(fresh)


def add_samples(session: Session, job: Job, kind: str, step: int, rows: list[dict[str, Any]]) -> JobSamples | None:
    """Store the model's answers at one evaluation (see `worker.ml.samples`); a (kind, step) the job
    has already is kept as it is, so a resumed job never duplicates them."""
    exists = session.scalar(
        select(JobSamples.id).where(JobSamples.job_id == job.id, JobSamples.kind == kind, JobSamples.step == step)
    )
    if exists is not None:
        return None
    clean = [{key: _finite(value) for key, value in row.items()} for row in rows]
    row = JobSamples(job_id=job.id, seq=_allocate_seq(session, job.id, 1), kind=kind, step=step, rows=clean)
    session.add(row)
    ring_after_commit(session, job_channel(job.id))
    return row


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def samples(session: Session, job: Job, *, kind: str | None = None) -> list[JobSamples]:
    """The job's sample answers, in step order."""
    query = select(JobSamples).where(JobSamples.job_id == job.id)
    if kind:
        query = query.where(JobSamples.kind == kind)
    return list(session.scalars(query.order_by(JobSamples.step, JobSamples.seq)))


def items_after(
    session: Session, job_id: int, after_seq: int, limit: int = 1000
) -> list[JobEvent | JobMetric | JobSamples]:
    """Events, metric points and sample answers with a sequence number above `after_seq`, in order."""
    items: list[JobEvent | JobMetric | JobSamples] = []
    for table in (JobEvent, JobMetric, JobSamples):
        query = select(table).where(table.job_id == job_id, table.seq > after_seq).order_by(table.seq).limit(limit)
        items.extend(session.scalars(query))
    return sorted(items, key=lambda item: item.seq)[:limit]


def events(session: Session, job: Job, *, after_seq: int = 0, limit: int | None = None) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.seq > after_seq).order_by(JobEvent.seq)
    return list(session.scalars(query.limit(limit) if limit else query))


def items_newest_first(session: Session, job: Job, *, before_seq: int | None, limit: int) -> list[JobEvent | JobMetric]:
    """A page of the job's events and metric points together, newest first; `before_seq` pages
    towards older ones."""
    items: list[JobEvent | JobMetric] = []
    for table in (JobEvent, JobMetric):
        query = select(table).where(table.job_id == job.id).order_by(table.seq.desc()).limit(limit)
        if before_seq is not None:
            query = query.where(table.seq < before_seq)
        items.extend(session.scalars(query))
    return sorted(items, key=lambda item: item.seq, reverse=True)[:limit]


def values_at(session: Session, job: Job, step: int) -> dict[str, Any]:
    """The train and eval values logged at one step, merged."""
    values: dict[str, Any] = {}
    for point in session.scalars(select(JobMetric).where(JobMetric.job_id == job.id, JobMetric.step == step)):
        values.update(point.values)
    return values


def metrics(
    session: Session, job: Job, *, after_step: int = -1, split: str | None = None, limit: int | None = None
) -> list[JobMetric]:
    """Metric points in step order (train before eval at the same step)."""
    query = select(JobMetric).where(JobMetric.job_id == job.id, JobMetric.step > after_step)
    if split:
        query = query.where(JobMetric.split == split)
    query = query.order_by(JobMetric.step, JobMetric.split)
    return list(session.scalars(query.limit(limit) if limit else query))
