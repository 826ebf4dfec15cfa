"""Building a finished job's merged model on request (POST /api/jobs/{id}/merge): the base
model with the job's adapter merged in, one folder, recorded as the job's `merged` artifact.
Progress and the outcome are job events, with `data.merge` one of started, progress, done,
failed. Asking twice is harmless: a merged model that exists is not built again.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError

from app import jobs
from app.artifacts import final_weights, merged_model
from app.config import get_settings
from app.db import session_scope
from app.models import Artifact, Job
from app.storage import BlobStore
from worker.jobs import job_output_key
from worker.reporter import directory_size

log = logging.getLogger(__name__)


def _event(job_id: int, message: str, *, level: str = "info", **data) -> None:
    with session_scope() as session:
        jobs.add_event(session, session.get(Job, job_id), message, level=level, **data)


def merge_job(job_id: int) -> None:
    """Build and record the job's merged model. Never raises for a failed merge: the job's
    events say what went wrong."""
    from worker import training

    settings = get_settings()
    store = BlobStore(settings.blobs_path)
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or merged_model(session, job) is not None:
            return
        weights = final_weights(session, job)
        if weights is None:
            jobs.add_event(session, job, "Cannot build a merged model: the job left no adapter", level="error",
                           merge="failed")  # fmt: skip
            return
        base_model, adapter_key, step = job.base_model, weights.blob_key, weights.step
        jobs.add_event(session, job, f"Building the merged model from the adapter at step {step}", merge="started")
    output = store.path(job_output_key(job_id)) / "merged"
    try:
        training.merge_adapter(base_model, store.path(adapter_key), output, models_dir=settings.models_path,
                               on_progress=lambda message: _event(job_id, f"Merge: {message}", merge="progress"))  # fmt: skip
    except Exception as failure:  # noqa: BLE001 - whatever broke, the user hears why
        if not isinstance(failure, training.TrainingError):
            log.exception("merging job %s failed", job_id)
        _event(job_id, f"Building the merged model failed: {failure}", level="error", merge="failed")
        return
    size = directory_size(output)
    with session_scope() as session:
        try:
            with session.begin_nested():
                session.add(Artifact(job_id=job_id, kind="merged", step=step,
                                     blob_key=output.relative_to(store.root).as_posix(), size_bytes=size))  # fmt: skip
        except IntegrityError:
            pass  # a second request built it at the same time; the folder is one of the two, whole
        jobs.add_event(session, session.get(Job, job_id), f"Saved the merged model ({size / 1e6:.1f} MB)", merge="done")
