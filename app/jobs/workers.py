"""The workers as a signed-in user sees them: each worker with its host, queues, devices and the
job it runs (named only when it is one of the caller's teams' jobs), the queues with their
lengths, the GPUs free and busy, and the warning a job gets when no live worker serves its queue.

Workers belong to no team: every signed-in user sees them. Their jobs do: another team's job
shows as "busy", never by name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.config import get_settings
from app.core.queue import device_queue, devices_of, is_gang_queue, nodes_of, queue_length
from app.core.tables import Job, JobState, WorkerProcess, utcnow
from app.core.worker_registry import live_workers_query, served_queues

# A worker silent longer than this has left its row behind (it was killed): no longer listed.
FORGET_AFTER = timedelta(days=1)
MAX_WORKERS_LISTED = 500
MAX_QUEUES_LISTED = 50
_ACTIVE = (JobState.running, JobState.cancelling)


@dataclass(frozen=True)
class JobOnWorker:
    id: int | None  # None: another team's job, shown only as busy
    name: str | None
    since: datetime | None


@dataclass(frozen=True)
class WorkerView:
    name: str
    hostname: str
    pid: int
    queues: list[str]
    devices: list[dict]
    started_at: datetime
    last_seen_at: datetime
    stale: bool
    job: JobOnWorker | None

    @property
    def gpus(self) -> list[dict]:
        return [device for device in self.devices if device.get("kind") == "gpu"]


@dataclass(frozen=True)
class QueueView:
    name: str
    waiting: int | None  # messages waiting in the broker; None when it cannot be looked into
    workers: int  # live workers taking from it


@dataclass(frozen=True)
class GpuCounts:
    total: int
    busy: int

    @property
    def free(self) -> int:
        return self.total - self.busy


@dataclass(frozen=True)
class WorkersOverview:
    workers: list[WorkerView]
    queues: list[QueueView]
    gpus: GpuCounts
    stale_after_s: float


def _queues_of(row: WorkerProcess) -> list[str]:
    """The queues a worker serves, as the Workers page lists them: without the gang queues,
    which only carry the join messages of multi-node jobs."""
    return [queue for queue in row.queues.split(",") if queue and not is_gang_queue(queue)]


def _running_jobs(session: Session, rows: list[WorkerProcess]) -> dict[int, Job]:
    ids = {row.current_job_id for row in rows if row.current_job_id is not None}
    if not ids:
        return {}
    return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids), Job.state.in_(_ACTIVE)))}


def _gpu_counts(workers: list[WorkerView]) -> GpuCounts:
    """GPUs of the live workers, each counted once (two workers of one machine may both see a
    GPU); busy when a worker that has it runs a job."""
    busy: dict[tuple[str, str], bool] = {}
    for worker in workers:
        if worker.stale:
            continue
        for gpu in worker.gpus:
            key = (worker.hostname, gpu.get("uuid") or str(gpu.get("index")))
            busy[key] = busy.get(key, False) or worker.job is not None
    return GpuCounts(total=len(busy), busy=sum(busy.values()))


def _worker_views(session: Session, team_ids: set[int]) -> list[WorkerView]:
    now = utcnow()
    stale_before = now - timedelta(seconds=get_settings().worker_stale_after_s)
    rows = list(
        session.scalars(
            select(WorkerProcess)
            .where(WorkerProcess.last_seen_at >= now - FORGET_AFTER)
            .order_by(WorkerProcess.hostname, WorkerProcess.name)
            .limit(MAX_WORKERS_LISTED)
        )
    )
    jobs = _running_jobs(session, rows)
    views = []
    for row in rows:
        job = jobs.get(row.current_job_id) if row.current_job_id is not None else None
        on_worker = None
        if job is not None:
            mine = job.team_id in team_ids
            on_worker = JobOnWorker(
                id=job.id if mine else None, name=job.name if mine else None, since=row.current_job_since
            )
        views.append(
            WorkerView(
                name=row.name,
                hostname=row.hostname,
                pid=row.pid,
                queues=_queues_of(row),
                devices=list(row.devices or []),
                started_at=row.started_at,
                last_seen_at=row.last_seen_at,
                stale=row.last_seen_at < stale_before,
                job=on_worker,
            )
        )
    return views


def workers_overview(session: Session, access: TeamAccess) -> WorkersOverview:
    """Every worker seen in the last day (the silent ones marked stale), the queues that live
    workers serve or the caller's queued jobs wait in, and the live GPUs free and busy."""
    workers = _worker_views(session, set(access.team_ids))
    live = [worker for worker in workers if not worker.stale]
    waiting_in = session.scalars(
        access.scope(select(Job.queue).where(Job.state == JobState.queued), Job).distinct().limit(MAX_QUEUES_LISTED)
    )
    names = sorted({queue for worker in live for queue in worker.queues} | set(waiting_in))[:MAX_QUEUES_LISTED]
    queues = [
        QueueView(
            name=name,
            waiting=queue_length(name),
            workers=sum(name in worker.queues for worker in live),
        )
        for name in names
    ]
    return WorkersOverview(
        workers=workers,
        queues=queues,
        gpus=_gpu_counts(workers),
        stale_after_s=get_settings().worker_stale_after_s,
    )


def gpu_counts(session: Session) -> GpuCounts:
    """The live workers' GPUs, free and busy, for the dashboard's header."""
    return _gpu_counts(_worker_views(session, set()))


def live_gpus(session: Session) -> list[dict]:
    """The GPUs the live workers report, each machine's GPU once: what a job can run on now."""
    seen: dict[tuple[str, str], dict] = {}
    for row in session.scalars(live_workers_query()):
        for gpu in row.devices or []:
            if gpu.get("kind") == "gpu":
                seen.setdefault((row.hostname, gpu.get("uuid") or str(gpu.get("index"))), gpu)
    return list(seen.values())


def queue_warning(job: Job, served: Counter[str]) -> str | None:
    """What to tell about a queued job that the live workers would not take, given the queues they
    serve and how many serve each (`served_queues`); None when enough of them serve its queue or
    it is not queued. Computed on every view, so it goes away as soon as the workers start."""
    if job.state != JobState.queued:
        return None
    devices = devices_of(job.spec)
    nodes = nodes_of(job.spec)
    serving = served[device_queue(job.queue, devices)]
    if serving >= nodes:
        return None
    size = f" with {devices} devices" if devices > 1 else ""
    start = f"tunelab worker --queues {job.queue}" + (
        f" --gpus-per-worker {devices}, or --cpu-processes {devices} on a machine without GPU" if devices > 1 else ""
    )
    if nodes > 1:
        return (
            f"The job runs on {nodes} nodes at once and {serving or 'no'} live worker{'' if serving == 1 else 's'}"
            f"{size} serve{'s' if serving == 1 else ''} the queue '{job.queue}': it waits until {nodes} do "
            f"(start one per machine: {start})."
        )
    return f"No live worker{size} serves the queue '{job.queue}': the job waits until one starts ({start})."


def job_queue_warning(session: Session, job: Job) -> str | None:
    """`queue_warning` for one job."""
    if job.state != JobState.queued:
        return None
    return queue_warning(job, served_queues(session))
