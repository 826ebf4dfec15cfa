"""The worker's side of the training library's `Reporter`: metric points, events, sample
answers and checkpoints go to the database (and ring the live streams), cancel requests come back.

The training thread never waits on the database to log: points are queued and a flusher
thread writes them in small batches (a few tens of milliseconds apart), together with the
job's progress and heartbeat. `should_stop`, called after every optimizer step, writes that
step to the job's row and reads the job's state back in the same statement: a cancel, which
updates the same row, therefore meets the exact number of steps done (the row lock orders
the two), and the job stops at that step or at the one then in progress.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import case, update
from sqlalchemy.exc import InterfaceError, OperationalError

from app.config import get_settings
from app.core.blobs import BlobStore
from app.core.database import session_scope
from app.core.live import ring_after_commit, team_channel
from app.core.tables import ArtifactKind, Job, JobState, utcnow
from app.jobs.artifacts import forget_rotated_checkpoints, record_artifact
from app.jobs.timeline import MetricPoint, add_event, add_metrics, add_samples
from app.sweeps.pruning import judge_trial

log = logging.getLogger(__name__)
T = TypeVar("T")

# Set by a worker's main process when it shuts down; its pool processes inherit this event
# across fork, so the job in hand stops at its next step with a checkpoint and goes back to
# the queue (see worker.celery_app).
shutdown_requested = multiprocessing.Event()


@dataclass(frozen=True)
class _Event:
    message: str
    level: str
    data: dict[str, Any]


@dataclass(frozen=True)
class _Samples:
    kind: str
    step: int
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class _Checkpoint:
    step: int
    path: Path


class DatabaseReporter:
    def __init__(self, job_id: int, store: BlobStore, *, linger_s: float = 0.02, heartbeat_s: float = 1.0) -> None:
        self.job_id = job_id
        self.store = store
        self.linger_s = linger_s
        self.heartbeat_s = heartbeat_s
        self._queue: list[_Event | MetricPoint | _Samples | _Checkpoint] = []
        self._lock = threading.Lock()  # guards the queue
        self._write_lock = threading.Lock()  # one flush at a time, so batches land in order
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._progress: tuple[int, int] | None = None
        self._epoch: float | None = None
        self._recent_steps: deque[tuple[float, int]] = deque(maxlen=30)
        self._last_team_ring = 0.0
        self._rung_progress: tuple[int, int] | None = None  # the progress the team channel last heard of
        self._thread = threading.Thread(target=self._run, name=f"tunelab-reporter-{job_id}", daemon=True)

    # ---- the Reporter protocol (called from the training thread) ----

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        split = "eval" if any(key.startswith("eval_") for key in metrics) else "train"
        self._put(MetricPoint(step=step, split=split, values=dict(metrics)))

    def event(self, message: str, level: str = "info", **data: Any) -> None:
        self._put(_Event(message, level, data))

    def progress(self, step: int, total_steps: int, epoch: float | None = None) -> None:
        self._progress = (step, total_steps)
        if epoch is not None:
            self._epoch = float(epoch)
        self._recent_steps.append((time.monotonic(), step))

    def flush(self) -> None:
        """Write what is queued now, from the calling (training) thread."""
        self._through_outages(self._flush)

    def checkpoint(self, step: int, path: Path) -> None:
        self._put(_Checkpoint(step, path))

    def samples(self, kind: str, step: int, rows: list[dict[str, Any]]) -> None:
        self._put(_Samples(kind, step, rows))

    def should_stop(self) -> bool:
        """Stop when the worker is shutting down, when the job is being cancelled, or when
        it is no longer this worker's to run (failed or requeued by someone else, deleted)."""
        if shutdown_requested.is_set():
            return True
        values: dict[str, Any] = {}
        if self._progress is not None:  # None before the first step
            values["step"], values["total_steps"] = self._progress
        if self._epoch is not None:  # with the step, not only at the next logging step
            values["epoch"] = self._epoch

        def write_progress_and_read_state() -> JobState | None:
            with session_scope() as session:
                statement = update(Job).where(Job.id == self.job_id).values(heartbeat_at=utcnow(), **values)
                return session.scalar(statement.returning(Job.state))

        return self._through_outages(write_progress_and_read_state) != JobState.running  # None: deleted

    def _through_outages(self, call: Callable[[], T]) -> T:
        """`call`, retried while the database is unreachable, for up to `db_outage_tolerance_s`:
        training waits out a short outage instead of failing (and spending one of the job's attempts)."""
        deadline = time.monotonic() + get_settings().db_outage_tolerance_s
        delay = 0.25
        while True:
            try:
                return call()
            except (OperationalError, InterfaceError) as error:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "job %s: the database is unreachable (%s); retrying in %.2g s",
                    self.job_id,
                    type(error.orig).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ---- lifecycle ----

    def start(self) -> DatabaseReporter:
        self._thread.start()
        return self

    def close(self) -> None:
        """Write everything still queued, then stop the flusher."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=60)
        self._flush()

    # ---- the flusher thread ----

    def _put(self, item) -> None:
        with self._lock:
            self._queue.append(item)
        self._wake.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            if self._wake.wait(self.heartbeat_s):
                time.sleep(self.linger_s)  # let a burst of points gather into one write
            self._wake.clear()
            try:
                self._flush()
            except Exception:
                log.exception("could not write job %s's progress; retrying", self.job_id)

    def _steps_per_second(self) -> float | None:
        if len(self._recent_steps) < 2:
            return None
        (t0, s0), (t1, s1) = self._recent_steps[0], self._recent_steps[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def _flush(self) -> None:
        with self._write_lock:
            self._write_queued()

    def _write_queued(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            with session_scope() as session:
                job = session.get(Job, self.job_id)
                if job is None:
                    return
                points = [item for item in batch if isinstance(item, MetricPoint)]
                for item in batch:
                    if isinstance(item, _Event):
                        add_event(session, job, item.message, level=item.level, **item.data)
                    elif isinstance(item, _Samples):
                        add_samples(session, job, item.kind, item.step, item.rows)
                    elif isinstance(item, _Checkpoint):
                        self._record_checkpoint(session, item)
                add_metrics(session, job, points)
                if points and job.sweep_id is not None:
                    judge_trial(session, job, {p.split for p in points})  # a sweep's trial may be pruned
                self._write_progress(session, job)
        except BaseException:
            with self._lock:  # put the batch back, in order, for the next try
                self._queue = batch + self._queue
            raise

    def _write_progress(self, session, job: Job) -> None:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if self._progress is not None:
            step, total = self._progress
            # Never behind what `should_stop` wrote: a flush that read an older step and lost the
            # race to the row would otherwise show fewer steps than are done, and a cancel then
            # would let more than one step in progress finish.
            step_now = case((Job.step > step, Job.step), else_=step)
            values.update(step=step_now, total_steps=total, steps_per_second=self._steps_per_second())
            now = time.monotonic()
            # Against the progress last announced, not the row's: `should_stop` has written the step
            # there already.
            if (step, total) != self._rung_progress and now - self._last_team_ring >= 1.0:
                self._last_team_ring, self._rung_progress = now, (step, total)
                values["updated_at"] = utcnow()
                ring_after_commit(session, team_channel(job.team_id))
        session.execute(update(Job).where(Job.id == job.id).values(**values))

    def _record_checkpoint(self, session, item: _Checkpoint) -> None:
        record_artifact(
            session, self.store, job_id=self.job_id, kind=ArtifactKind.checkpoint, step=item.step, path=item.path
        )
        forget_rotated_checkpoints(session, self.store, self.job_id, keep_step=item.step)
