"""Jobs whose worker vanished: found (a dead process on this host, or a silent heartbeat),
then requeued to resume from their last checkpoint, or failed after too many crashes.

`reap_orphans` runs when a worker starts and periodically in the web app.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.core.database import session_scope
from app.core.queue import device_queue, devices_of, enqueue_job, job_ids_in_broker
from app.core.tables import Job, JobState, utcnow
from app.jobs.states import IllegalTransition, back_to_queue, transition
from app.jobs.timeline import add_event

_ACTIVE = (JobState.running, JobState.cancelling, JobState.pausing)


def worker_identity(pid: int) -> str:
    """How a job (or a chat request) names the process that holds it: `host:pid`."""
    return f"{socket.gethostname()}:{pid}"


def _owner_is_dead_here(owner: str | None) -> bool:
    """True when the owner was a process on this host that no longer runs: gone, or a zombie
    (killed, its parent gone too, and not yet reaped; in a container nobody may ever reap it)."""
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
    """A running (or cancelling, or pausing) job whose worker is gone: a dead process on this host, or
    no heartbeat for `stale_after_s`."""
    if job.state not in _ACTIVE:
        return False
    if _owner_is_dead_here(job.worker):
        return True
    last = job.heartbeat_at or job.started_at or job.updated_at
    return utcnow() - last > timedelta(seconds=stale_after_s)


def recover_orphan(session: Session, job: Job, *, max_attempts: int) -> bool:
    """Requeue (or, after too many crashes, fail) a job whose worker is gone. Returns True
    when the job should be sent to the queue again. Safe to race: the transition is a
    compare-and-set, so of two reapers only one acts."""
    if job.state == JobState.cancelling:
        transition(session, job, JobState.cancelled, message="Job cancelled (its worker stopped while cancelling)")
        return False
    if job.state == JobState.pausing:
        message = "Job paused (its worker stopped while pausing); resuming continues from its last checkpoint"
        transition(session, job, JobState.paused, message=message)
        return False
    where = f"at step {job.step}" if job.step else "before the first step"
    crashes = job.crashes + 1
    if crashes >= max_attempts:
        error = (
            f"The worker running this job stopped {crashes} times ({where} the last time); giving up. "
            "Check the worker's logs, e.g. for running out of memory."
        )
        transition(session, job, JobState.failed, crashes=crashes, error=error)
        return False
    message = (
        f"Worker lost {where}; the job will resume from its last checkpoint (crash {crashes} of {max_attempts} allowed)"
    )
    back_to_queue(session, job, crashes=crashes, message=message)
    return True


def find_orphans(session: Session, *, stale_after_s: float) -> list[Job]:
    candidates = session.scalars(select(Job).where(Job.state.in_(_ACTIVE))).all()
    return [job for job in candidates if is_orphaned(job, stale_after_s=stale_after_s)]


# A job queued this long with no message in the broker has lost it (the broker restarted
# empty, say); younger ones may be between their commit and their enqueue.
LOST_MESSAGE_AFTER = timedelta(seconds=60)


def resend_lost_messages() -> list[int]:
    """Send again the run message of every queued job the broker no longer holds. Safe when
    a message turns out not to be lost after all: a worker claims a job once (a compare-and-
    set), and drops a message whose job is already running or finished. Returns the ids sent."""
    cutoff = utcnow() - LOST_MESSAGE_AFTER
    with session_scope() as session:
        queued = session.execute(
            select(Job.id, Job.queue, Job.spec).where(Job.state == JobState.queued, Job.updated_at < cutoff)
        ).all()
    by_queue: dict[str, list[int]] = {}  # by the broker queue the job's message goes to
    for job_id, queue, spec in queued:
        by_queue.setdefault(device_queue(queue, devices_of(spec)), []).append(job_id)
    resent: list[int] = []
    for queue, job_ids in by_queue.items():
        held = job_ids_in_broker(queue)
        if held is None:
            return resent  # this broker cannot be looked into: nothing to compare with
        for job_id in sorted(set(job_ids) - held):
            with session_scope() as session:
                job = session.get(Job, job_id)
                if job is None or job.state != JobState.queued:
                    continue
                add_event(
                    session,
                    job,
                    "The queue no longer held this job (did the broker restart?); sent it again",
                    level="warning",
                )
                job.updated_at = utcnow()
            enqueue_job(job_id, queue)  # the broker queue already
            resent.append(job_id)
    return resent


def reap_orphans() -> list[int]:
    """Requeue the jobs whose worker is gone (or fail those that crashed too often). Returns
    the requeued ids."""
    settings = get_settings()
    requeue: list[tuple[int, str, int]] = []
    with session_scope() as session:
        for job in find_orphans(session, stale_after_s=settings.worker_stale_after_s):
            try:
                if recover_orphan(session, job, max_attempts=settings.job_max_attempts):
                    requeue.append((job.id, job.queue, devices_of(job.spec)))
            except IllegalTransition:
                continue  # someone else got there first
    for job_id, queue, devices in requeue:
        enqueue_job(job_id, queue, devices)
    return [job_id for job_id, _, _ in requeue]
