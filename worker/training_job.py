"""Running one job on this worker: claim it, train it, record how it ended.

The Celery task is a one-line call into `run_job`; everything here is plain code that a
test can call directly. The job's state changes only through `app.jobs.states.transition`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from app.config import get_settings
from app.contract.spec import Method, TrainingSpec
from app.core.blobs import BlobStore, blob_store
from app.core.database import session_scope
from app.core.queue import DEFAULT_QUEUE, devices_of, enqueue_gang_join, enqueue_job
from app.core.tables import ArtifactKind, Dataset, Job, JobState, utcnow
from app.core.worker_registry import set_current_job
from app.jobs.artifacts import final_weights, job_output_key, record_artifact, record_tracking_files
from app.jobs.recovery import is_orphaned, recover_orphan, worker_identity
from app.jobs.states import IllegalTransition, back_to_queue, transition
from app.sweeps.scheduling import after_trial
from worker.database_reporter import DatabaseReporter
from worker.distributed_job import (
    GangNotFormed,
    GangStopped,
    Launch,
    RankFailure,
    Rendezvous,
    join_gang,
    train_on_devices,
)
from worker.ml.reporting import counted
from worker.ml.result import STOPPED, TrainResult

log = logging.getLogger(__name__)

# True in a worker whose pool process runs one task and is then replaced (`tunelab worker`
# for training queues; set by worker.celery_app at start-up, inherited by the pool's forks).
one_job_per_process = False


def keep_bitsandbytes_unloaded() -> None:
    """peft imports bitsandbytes whenever it is installed, and its import probes 4-bit kernels
    (on some CPUs it looks for one on the Hugging Face Hub and logs a warning when it cannot).
    A process that trains no QLoRA marks it absent before peft loads: peft then leaves it out.
    For good, in this process: only for one that runs a single job."""
    sys.modules.setdefault("bitsandbytes", None)  # type: ignore[arg-type]


class JobInputError(Exception):
    """The job's inputs are gone; the message is shown to the user."""


@dataclass(frozen=True)
class Claimed:
    job_id: int
    spec: TrainingSpec
    dataset_key: str | None
    dataset_name: str | None
    validation_key: str | None
    attempt: int
    parent_job_id: int | None = None
    parent_weights_key: str | None = None  # the blob of the adapter (or weights) a continued job starts from
    sweep_id: int | None = None  # the sweep this job is a trial of
    run_name: str | None = None  # the job as experiment trackers name its run
    queue: str = DEFAULT_QUEUE  # the job's queue (a multi-node job's other nodes come from it)


def claim(job_id: int, owner: str) -> Claimed | None:
    """Mark the job running on this worker, or return None when it is not ours to run:
    finished, cancelled, or held by a worker that is still alive (a duplicate delivery)."""
    settings = get_settings()
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        try:
            if job.state == JobState.cancelling:
                transition(session, job, JobState.cancelled, message="Job cancelled before it resumed")
                return None
            if job.state == JobState.pausing:
                transition(session, job, JobState.paused, message="Job paused before it resumed")
                return None
            if job.state == JobState.running:
                if not is_orphaned(job, stale_after_s=settings.worker_stale_after_s):
                    log.info("job %s is running on %s; dropping a duplicate message", job_id, job.worker)
                    return None
                if not recover_orphan(session, job, max_attempts=settings.job_max_attempts):
                    return None
            if job.state != JobState.queued:
                return None
            attempt = job.attempts + 1
            where = f"on {owner.rpartition(':')[0]}"
            if attempt > 1:
                message = f"Training resumed {where} (attempt {attempt})"
            else:  # a first attempt, or the first since a user resumed the job from a checkpoint
                message = f"Training resumed {where} from step {job.step}" if job.step else f"Training started {where}"
            transition(
                session, job, JobState.running, message=message, worker=owner, attempts=attempt, heartbeat_at=utcnow()
            )
            _show_on_worker_row(session, job.id)
        except IllegalTransition as race:
            log.info("job %s changed while claiming it (%s); leaving it", job_id, race)
            return None
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        validation = session.get(Dataset, job.validation_dataset_id) if job.validation_dataset_id else None
        parent = session.get(Job, job.parent_job_id) if job.parent_job_id else None
        parent_weights = final_weights(session, parent) if parent is not None else None
        return Claimed(
            job_id=job.id,
            spec=TrainingSpec.model_validate(job.spec),
            dataset_key=dataset.blob_key if dataset else None,
            dataset_name=dataset.name if dataset else None,
            validation_key=validation.blob_key if validation else None,
            attempt=attempt,
            parent_job_id=job.parent_job_id,
            parent_weights_key=parent_weights.blob_key if parent_weights else None,
            sweep_id=job.sweep_id,
            run_name=f"tunelab-job-{job.id}-{job.name}" if job.name else f"tunelab-job-{job.id}",
            queue=job.queue,
        )


def _show_on_worker_row(session, job_id: int | None) -> None:
    """Say on this worker's heartbeat row which job it runs (None: none). The row is the
    Celery main process's: the parent of this pool process (or this process, in a solo pool)."""
    set_current_job(session, hostname=socket.gethostname(), pids=(os.getppid(), os.getpid()), job_id=job_id)


def _input_file(store: BlobStore, key: str | None, what: str) -> Path:
    if key is None or not store.exists(key):
        raise JobInputError(f"The {what} dataset no longer exists (it was deleted after the job was created).")
    return store.path(key)


def _parent_weights(store: BlobStore, claimed: Claimed) -> Path | None:
    """The adapter (or weights) folder a continued job starts from, through the blob store."""
    if claimed.parent_job_id is None:
        return None
    if claimed.parent_weights_key is None or not store.exists(claimed.parent_weights_key):
        raise JobInputError(
            f"The adapter (or weights) of job #{claimed.parent_job_id}, which this job continues, no longer exists."
        )
    return store.path(claimed.parent_weights_key)


def run_job(job_id: int) -> None:
    """Claim, train and finish one job. Never raises for a training failure: the job ends
    `failed` with a message the user can act on."""
    from worker import ml

    settings = get_settings()
    store = blob_store()
    claimed = claim(job_id, worker_identity(os.getpid()))
    if claimed is None:
        return
    if one_job_per_process and claimed.spec.method != Method.qlora:
        keep_bitsandbytes_unloaded()
    reporter = DatabaseReporter(job_id, store).start()
    result, error, retry, requeue_reason = None, None, False, None
    try:
        train_file = _input_file(store, claimed.dataset_key, "training")
        eval_file = _input_file(store, claimed.validation_key, "validation") if claimed.validation_key else None
        start_from = _parent_weights(store, claimed)
        if claimed.spec.distributed:
            result = _train_on_devices(claimed, store, reporter, train_file, eval_file, start_from)
        else:
            result = ml.train(
                claimed.spec,
                train_file=train_file,
                eval_file=eval_file,
                reporter=reporter,
                output_dir=store.path(job_output_key(job_id)),
                models_dir=settings.models_path,
                dataset_name=claimed.dataset_name,
                start_from=start_from,
                start_from_name=f"job #{claimed.parent_job_id}" if start_from else None,
                trackers=ml.TrackerSettings(
                    run_name=claimed.run_name,
                    wandb_api_key=settings.wandb_api_key.get_secret_value() if settings.wandb_api_key else None,
                    wandb_base_url=settings.wandb_base_url,
                    mlflow_tracking_uri=settings.mlflow_tracking_uri,
                ),
            )
    except (ml.DiskFullError, RankFailure) as failure:  # the machine's fault, not the job's: resume it
        error, retry = str(failure), True
    except GangNotFormed as failure:  # not enough free workers now: the job waits in the queue again
        requeue_reason, result = f"{failure}. The job goes back to the queue", _not_started(job_id)
    except GangStopped:  # cancelled or paused while its gang was forming
        result = _not_started(job_id)
    except (ml.TrainingError, JobInputError) as failure:
        error = str(failure)
    except Exception as failure:
        log.exception("job %s failed", job_id)
        error = f"Training failed unexpectedly: {type(failure).__name__}: {failure}"
    finally:
        reporter.close()
    try:
        _finish(job_id, claimed, store, result, error, retry=retry, requeue_reason=requeue_reason)
        if claimed.sweep_id is not None:
            _advance_sweep(job_id)
    finally:
        try:
            with session_scope() as session:
                _show_on_worker_row(session, None)
        except Exception:  # the database is gone: the row goes stale, and the page says so
            log.exception("could not clear the job from this worker's row")


def _train_on_devices(claimed: Claimed, store: BlobStore, reporter, train_file, eval_file, start_from):
    """The job on `spec.num_devices` processes (torchrun); rank 0 reports through its own reporter."""
    launch = Launch(
        job_id=claimed.job_id,
        spec=claimed.spec.model_dump(mode="json"),
        train_file=str(train_file),
        output_dir=str(store.path(job_output_key(claimed.job_id))),
        eval_file=str(eval_file) if eval_file else None,
        dataset_name=claimed.dataset_name,
        start_from=str(start_from) if start_from else None,
        start_from_name=f"job #{claimed.parent_job_id}" if start_from else None,
        run_name=claimed.run_name,
    )
    return train_on_devices(launch, reporter, attempt=claimed.attempt, invite=_invite(claimed))


def _invite(claimed: Claimed):
    """How a multi-node job's leader asks one more worker of the job's queue to join its gang."""

    def invite(rendezvous: Rendezvous) -> None:
        enqueue_gang_join(
            claimed.job_id,
            claimed.queue,
            claimed.spec.num_devices,
            join=asdict(rendezvous),
            expires_in_s=max(1.0, rendezvous.deadline - time.time()),
        )

    return invite


def _not_started(job_id: int) -> TrainResult:
    """The outcome of an attempt that trained no step (its gang never formed): the job where it was."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        step, total = (job.step or 0, job.total_steps or 0) if job is not None else (0, 0)
    return TrainResult(status=STOPPED, step=step, total_steps=total)


def run_gang_node(job_id: int, join: dict) -> None:
    """Be one node (not the leader) of a multi-node job's gang: run this worker's ranks, shown on
    its row of the Workers page. Never changes the job's state: its leader's worker owns that."""
    rendezvous = Rendezvous(**join)
    if not _gang_attempt_goes_on(rendezvous):
        log.info("job %s: attempt %s is over; not joining its gang", job_id, rendezvous.attempt)
        return
    try:
        with session_scope() as session:
            _show_on_worker_row(session, job_id)
        join_gang(rendezvous, still_wanted=lambda: _gang_attempt_goes_on(rendezvous))
    finally:
        try:
            with session_scope() as session:
                _show_on_worker_row(session, None)
        except Exception:
            log.exception("could not clear the job from this worker's row")


def _gang_attempt_goes_on(rendezvous: Rendezvous) -> bool:
    """Whether the attempt a join message is for is still the job's own (running, not requeued)."""
    try:
        with session_scope() as session:
            job = session.get(Job, rendezvous.job_id)
            return (
                job is not None
                and job.attempts == rendezvous.attempt
                and job.state in (JobState.running, JobState.cancelling, JobState.pausing)
            )
    except Exception:  # the database is away: the ranks carry on (rank 0 waits outages out itself)
        log.exception("job %s: could not read its state", rendezvous.job_id)
        return True


def _advance_sweep(job_id: int) -> None:
    """The job was a sweep's trial: its place is free for the next one. The web app's periodic
    step does the same, so a failure here only delays the next trial."""
    try:
        after_trial(job_id)
    except Exception:
        log.exception("job %s: could not launch its sweep's next trial", job_id)


def _finish(
    job_id: int,
    claimed: Claimed,
    store: BlobStore,
    result,
    error: str | None,
    *,
    retry: bool,
    requeue_reason: str | None = None,
) -> None:
    """Record how the run ended. A failure worth retrying (a full disk) sends the job back to
    the queue, to resume from its last whole checkpoint, as a crash counts: up to the job's
    allowed attempts, then it fails with the reason. `requeue_reason`: the run did not start
    (a multi-node job's gang did not form) and the job waits in the queue again, no crash counted."""
    requeue = False
    max_attempts = get_settings().job_max_attempts
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        _record_tracking(session, job, store, result)
        try:
            if error is not None and retry and job.crashes + 1 < max_attempts and job.state == JobState.running:
                crashes = job.crashes + 1
                message = f"{error}. The job goes back to the queue (retry {crashes} of {max_attempts - 1})"
                back_to_queue(session, job, crashes=crashes, message=message)
                requeue = True
            elif error is not None:
                transition(session, job, JobState.failed, error=error)
            elif result.completed and job.state in (JobState.running, JobState.pausing):
                _record_outputs(session, job, claimed, store, result)
                transition(
                    session,
                    job,
                    JobState.succeeded,
                    step=result.step,
                    total_steps=result.total_steps,
                    trained_tokens=result.trained_tokens,
                    message=f"Job succeeded after {counted(result.step, 'step')}",
                )
            elif job.state == JobState.cancelling:
                transition(
                    session,
                    job,
                    JobState.cancelled,
                    message=f"Job cancelled at step {result.step}; its checkpoints are kept",
                )
            elif job.state == JobState.pausing:
                transition(
                    session,
                    job,
                    JobState.paused,
                    message=f"Job paused at step {result.step}; resuming continues from the checkpoint there",
                )
            elif job.state == JobState.running:
                # Stopped without a cancel: this worker is shutting down (another one resumes it), or
                # the gang of a multi-node job did not form.
                message = requeue_reason or f"Worker stopped at step {result.step}; the job will resume from there"
                back_to_queue(session, job, message=message)
                requeue = True
        except IllegalTransition as race:
            log.warning("job %s: could not record the outcome (%s)", job_id, race)
        queue, devices = job.queue, devices_of(job.spec)
    if requeue:
        enqueue_job(job_id, queue, devices)


def _record_tracking(session, job: Job, store: BlobStore, result) -> None:
    """Keep the run's experiment-tracking files among the job's artifacts, however it ended."""
    from worker.ml.trackers import tracking_dir

    folder = tracking_dir(store.path(job_output_key(job.id)))
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    try:
        with session.begin_nested():
            record_tracking_files(session, store, job_id=job.id, step=result.step if result else job.step, path=folder)
    except Exception:  # the job's outcome is recorded all the same
        log.exception("job %s: could not record its tracking files", job.id)


def _record_outputs(session, job: Job, claimed: Claimed, store: BlobStore, result) -> None:
    final_kind = ArtifactKind.adapter if claimed.spec.uses_adapter else ArtifactKind.model
    meta = {"metrics": result.metrics, "truncated_rows": result.truncated_rows}
    for kind, path in ((final_kind, result.final_dir), (ArtifactKind.merged, result.merged_dir)):
        if path is not None:
            record_artifact(session, store, job_id=job.id, kind=kind, step=result.step, path=path, meta=meta)
