"""A job's states, and the one function that changes them (`transition`)::

    queued ──> running ──> succeeded | failed
      │           │  └───> queued            (its worker died: retried from the last checkpoint)
      │           ├──────> cancelling ──> cancelled | failed
      │           └──────> pausing ──> paused | succeeded | failed | cancelling
      └──> cancelled | failed | paused

    cancelled | failed | paused ──> queued   (resumed: from the last checkpoint, with fresh attempts)
    paused ──> cancelled

Each change is a compare-and-set on the current state (`app.core.state_machine`) and is
also a job event, which the live streams carry.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.core.live import ring_after_commit, team_channel
from app.core.state_machine import IllegalTransition, StateMachine
from app.core.tables import Job, JobState, utcnow
from app.jobs.timeline import add_event
from app.webhooks.events import record_state_change

__all__ = [
    "JOB_STATES",
    "RESUMABLE",
    "IllegalTransition",
    "back_to_queue",
    "reopen",
    "request_cancel",
    "request_pause",
    "transition",
]

_QUEUED, _RUNNING, _CANCELLING = JobState.queued, JobState.running, JobState.cancelling
_SUCCEEDED, _FAILED, _CANCELLED = JobState.succeeded, JobState.failed, JobState.cancelled
_PAUSING, _PAUSED = JobState.pausing, JobState.paused

JOB_STATES = StateMachine(
    Job,
    {
        _QUEUED: frozenset({_RUNNING, _CANCELLED, _FAILED, _PAUSED}),
        _RUNNING: frozenset({_SUCCEEDED, _FAILED, _CANCELLING, _QUEUED, _PAUSING}),
        _CANCELLING: frozenset({_CANCELLED, _FAILED}),
        # The step that the pause met may be the last one: the run then finishes.
        _PAUSING: frozenset({_PAUSED, _SUCCEEDED, _FAILED, _CANCELLING}),
        _PAUSED: frozenset({_QUEUED, _CANCELLED}),
        _SUCCEEDED: frozenset(),
        _FAILED: frozenset({_QUEUED}),
        _CANCELLED: frozenset({_QUEUED}),
    },
    what="job",
)
# The states a user may resume a job from: it goes back to the queue and continues from its last checkpoint.
RESUMABLE = frozenset({_CANCELLED, _FAILED, _PAUSED})

_STATE_MESSAGES = {
    _RUNNING: "Training started",
    _SUCCEEDED: "Job succeeded",
    _FAILED: "Job failed",
    _CANCELLING: "Cancelling: training stops at the next step",
    _CANCELLED: "Job cancelled",
    _QUEUED: "Job queued",
    _PAUSING: "Pausing: training stops at the next step, with a checkpoint there",
    _PAUSED: "Job paused",
}


def transition(
    session: Session,
    job: Job,
    to: JobState,
    *,
    message: str | None = None,
    error: str | None = None,
    record_step: bool = False,
    **fields: Any,
) -> Job:
    """Move a job to state `to`, or raise IllegalTransition: when `to` is not reachable from
    its state, or when another process changed the job since it was read (that one won)."""
    current = job.state
    values: dict[str, Any] = dict(fields)
    if to == _RUNNING and job.started_at is None:
        values["started_at"] = utcnow()
    if to.is_terminal or to == _PAUSED:  # no longer training
        values["steps_per_second"] = None
    if error is not None:
        values["error"] = error
    elif to == _QUEUED:
        values["error"] = None  # a job back in the queue carries no error (a resumed failed job)
    if not JOB_STATES.move(session, job.id, from_states=[current], to=to, **values):
        session.refresh(job)
        raise IllegalTransition("job", job.id, job.state, to)
    session.refresh(job)
    extra: dict[str, Any] = {"error": error} if error else {}
    if record_step:  # read after the UPDATE, which holds the row: the step as it is at this change
        extra["step"] = job.step
    level = "error" if to == _FAILED else "info"
    add_event(session, job, message or _STATE_MESSAGES[to], level=level, state=to.value, **extra)
    record_state_change(session, job, to)  # webhooks: delivered after commit, by another worker
    ring_after_commit(session, team_channel(job.team_id))
    return job


def back_to_queue(session: Session, job: Job, *, message: str, **fields: Any) -> Job:
    """A running job goes back to the queue, to resume from its last checkpoint on whichever
    worker takes it next: the worker that held it is forgotten."""
    return transition(
        session, job, _QUEUED, message=message, worker=None, heartbeat_at=None, steps_per_second=None, **fields
    )


def reopen(session: Session, job: Job, *, message: str, step: int) -> Job:
    """A cancelled, failed or paused job goes back to the queue, to continue from its checkpoint at
    `step` (0: from the start). A user's resume is a new start: the attempts and crashes counted
    so far are forgotten, and so is the old error (the event before this one keeps it)."""
    if job.state not in RESUMABLE:
        raise IllegalTransition("job", job.id, job.state, _QUEUED)
    return back_to_queue(session, job, message=message, step=step, attempts=0, crashes=0)


def request_cancel(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next step.

    The Cancelling event records the steps done then (`step`): the transition's UPDATE holds
    the job's row (SQLite: the database) until commit, and a worker writes its step to that
    row after every optimizer step in the statement that reads the state back
    (`worker.database_reporter`), so the step read after the UPDATE is exact: the job stops
    at that step or at the one then in progress."""
    if job.state == _QUEUED:
        return transition(session, job, _CANCELLED, message="Job cancelled before it started")
    if job.state in (_RUNNING, _PAUSING):
        return transition(session, job, _CANCELLING, record_step=True)
    if job.state == _PAUSED:
        return transition(session, job, _CANCELLED, message="Job cancelled while paused; its checkpoints are kept")
    raise IllegalTransition("job", job.id, job.state, _CANCELLED)


def request_pause(session: Session, job: Job) -> Job:
    """A queued job is paused at once (no worker will start it until it is resumed); a running
    one is asked to stop at its next step, saving a checkpoint there (as a cancel does)."""
    if job.state == _QUEUED:
        return transition(
            session, job, _PAUSED, message="Job paused while queued: no worker takes it until it is resumed"
        )
    if job.state == _RUNNING:
        return transition(session, job, _PAUSING, record_step=True)
    raise IllegalTransition("job", job.id, job.state, _PAUSED)
