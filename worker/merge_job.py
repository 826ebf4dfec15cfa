"""Building a finished job's merged model on request (POST /api/jobs/{id}/merge): the base
model with the job's adapter merged in, one folder, recorded as the job's `merged` artifact.
Progress and the outcome are job events, with `data.merge` one of started, progress, done,
failed. Asking twice is harmless: a merged model that exists is not built again.
"""

from __future__ import annotations

import logging

from app.config import get_settings
from app.core.blobs import blob_store, directory_size
from app.core.database import session_scope
from app.core.tables import ArtifactKind, Job
from app.jobs.artifacts import final_weights, job_output_key, merged_model, record_artifact
from app.jobs.timeline import add_event

log = logging.getLogger(__name__)


def _event(job_id: int, message: str, *, level: str = "info", **data) -> None:
    with session_scope() as session:
        add_event(session, session.get(Job, job_id), message, level=level, **data)


def merge_job(job_id: int) -> None:
    """Build and record the job's merged model. Never raises for a failed merge: the job's
    events say what went wrong."""
    from worker import ml

    settings = get_settings()
    store = blob_store()
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or merged_model(session, job) is not None:
            return
        weights = final_weights(session, job)
        if weights is None:
            add_event(
                session, job, "Cannot build a merged model: the job left no adapter", level="error", merge="failed"
            )
            return
        base_model, adapter_key, step = job.base_model, weights.blob_key, weights.step
        add_event(session, job, f"Building the merged model from the adapter at step {step}", merge="started")
    output = store.path(job_output_key(job_id)) / "merged"
    try:
        ml.merge_adapter(
            base_model,
            store.path(adapter_key),
            output,
            models_dir=settings.models_path,
            on_progress=lambda message: _event(job_id, f"Merge: {message}", merge="progress"),
        )
    except Exception as failure:
        if not isinstance(failure, ml.TrainingError):
            log.exception("merging job %s failed", job_id)
        _event(job_id, f"Building the merged model failed: {failure}", level="error", merge="failed")
        return
    size = directory_size(output)
    with session_scope() as session:
        # A second request may have built it at the same time: the folder is one of the two, whole.
        record_artifact(session, store, job_id=job_id, kind=ArtifactKind.merged, step=step, path=output)
        add_event(session, session.get(Job, job_id), f"Saved the merged model ({size / 1e6:.1f} MB)", merge="done")
