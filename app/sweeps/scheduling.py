"""Launching a sweep's trials, at most `max_concurrent` queued or running at a time.

`advance_sweep` is called when a trial ends (by the worker that ran it), when a sweep is
created, and periodically by the web app (`advance_running_sweeps`), so a trial that ended
without a worker (cancelled while queued, its worker lost) still frees its place. It is
idempotent and safe with several app and worker processes: the sweep's row is locked
(`SELECT ... FOR UPDATE`; SQLite has one writer at a time) while the trials are counted and
the next one is written, and a trial number is unique per sweep, so a second launcher of the
same trial fails instead of running it twice.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts.access import access_for
from app.core.database import session_scope
from app.core.errors import DomainError, Unavailable
from app.core.tables import Job, JobState, Sweep, SweepState, User, utcnow
from app.jobs.submission import JobSubmission, submit_job
from app.sweeps.space import trial_spec

log = logging.getLogger("tunelab.sweeps")

_ENDED = (JobState.succeeded, JobState.failed, JobState.cancelled)


def locked_sweep(session: Session, sweep_id: int) -> Sweep | None:
    return session.scalar(
        select(Sweep).where(Sweep.id == sweep_id).with_for_update().execution_options(populate_existing=True)
    )


def _launch_next(session: Session, sweep: Sweep) -> Job | None:
    """Launch the sweep's next trial if it has one and a free place (the caller holds the
    sweep's row); None when there is nothing to launch now. Commits."""
    active, last = session.execute(
        select(
            func.count().filter(Job.state.not_in(_ENDED)),
            func.max(Job.sweep_trial),
        ).where(Job.sweep_id == sweep.id)
    ).one()
    trial = 0 if last is None else last + 1
    if trial >= len(sweep.trials):
        if not active:
            sweep.state, sweep.finished_at = SweepState.finished, utcnow()
        session.commit()
        return None
    if active >= sweep.max_concurrent:
        session.commit()
        return None
    user = session.get(User, sweep.created_by_id) if sweep.created_by_id else None
    access = access_for(session, user) if user is not None and user.is_active else None
    if access is None or sweep.team_id not in access.memberships:
        log.warning("sweep %s: its creator can no longer launch jobs in its team; stopping it", sweep.id)
        sweep.state, sweep.finished_at = SweepState.cancelled, utcnow()
        session.commit()
        return None
    base = JobSubmission.model_validate(sweep.submission)
    values = sweep.trials[trial]
    spec = trial_spec(base.spec.model_dump(mode="json"), values, trial)
    shown = ", ".join(f"{name}={value}" for name, value in values.items())
    submission = base.model_copy(
        update={"spec": spec, "team_id": sweep.team_id, "name": f"{sweep.name} · trial {trial} · {shown}"[:200]}
    )
    try:
        return submit_job(session, access, submission, sweep_trial=(sweep.id, trial))
    except Unavailable:
        # The broker is down: forget the trial's failed job rather than spend the trial on the
        # outage; it is launched again by a later step, once the broker answers.
        session.execute(delete(Job).where(Job.sweep_id == sweep.id, Job.sweep_trial == trial))
        session.commit()
        raise


def advance_sweep(session: Session, sweep_id: int) -> list[int]:
    """Launch trials until the sweep has `max_concurrent` queued or running (or none left), and
    mark it finished once every trial has ended. Returns the ids of the jobs launched."""
    launched: list[int] = []
    while True:
        sweep = locked_sweep(session, sweep_id)
        if sweep is None or sweep.state != SweepState.running:
            session.commit()
            return launched
        try:
            job = _launch_next(session, sweep)
        except IntegrityError:  # another process launched this trial first: count again
            session.rollback()
            continue
        except Unavailable:  # the broker is down: try again at a later step
            log.warning("sweep %s: the job queue is unreachable; its next trial waits", sweep_id)
            return launched
        except DomainError as error:  # its dataset was deleted, its model removed, ...
            session.rollback()
            log.warning("sweep %s cannot launch its next trial (%s); stopping it", sweep_id, error)
            sweep = locked_sweep(session, sweep_id)
            if sweep is not None and sweep.state == SweepState.running:
                sweep.state, sweep.finished_at = SweepState.cancelled, utcnow()
            session.commit()
            return launched
        if job is None:
            return launched
        launched.append(job.id)


def after_trial(job_id: int) -> list[int]:
    """A job has ended: if it was a sweep's trial, launch what its place allows."""
    with session_scope() as session:
        sweep_id = session.scalar(select(Job.sweep_id).where(Job.id == job_id))
        return advance_sweep(session, sweep_id) if sweep_id is not None else []


def advance_running_sweeps() -> list[int]:
    """Every running sweep advanced (the periodic step of the web app). Returns the jobs launched."""
    with session_scope() as session:
        sweep_ids = list(session.scalars(select(Sweep.id).where(Sweep.state == SweepState.running)))
    launched: list[int] = []
    for sweep_id in sweep_ids:
        with session_scope() as session:
            launched += advance_sweep(session, sweep_id)
    return launched
