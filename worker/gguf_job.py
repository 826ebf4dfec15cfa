"""GGUF export of a finished job on request (POST /api/jobs/{id}/exports/gguf): the merged model
(built first through the merge task's own code when it does not exist yet, or the weights
themselves for full fine-tuning) converted to one GGUF file with an Ollama Modelfile, recorded
as the job's `gguf-<quantization>` artifact, then pushed to a Hub repository when one is named.
Progress and the outcome are job events, with `data.gguf` one of started, progress, done,
failed, and `data.hub` one of pushed, refused. A failed push leaves the export in place.
"""

from __future__ import annotations

import logging

from app.config import get_settings
from app.contract.export import GgufQuantization
from app.contract.spec import Method
from app.core.blobs import blob_store
from app.core.database import session_scope
from app.core.tables import Job
from app.jobs.artifacts import final_weights, job_output_key, merged_model, record_artifact
from app.jobs.exports import gguf_export, gguf_kind
from app.jobs.timeline import add_event
from worker import merge_job

log = logging.getLogger(__name__)


def _event(job_id: int, message: str, *, level: str = "info", **data) -> None:
    with session_scope() as session:
        add_event(session, session.get(Job, job_id), message, level=level, **data)


def _source(job_id: int) -> tuple[str, int, str] | None:
    """(blob key, step, job label) of the model to convert, merging the adapter first if needed."""
    for attempt in range(2):
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job.method == Method.full.value:
                weights = final_weights(session, job)
            else:
                weights = merged_model(session, job)
            if weights is not None:
                return weights.blob_key, weights.step, job.suffix or job.name
            if attempt or job.method == Method.full.value:
                return None
        merge_job.merge_job(job_id)  # reports its own progress and failure as events
    return None


def export_gguf_job(job_id: int, quantization: str, hub_repo: str | None = None) -> None:
    """Write, record and optionally push the job's GGUF export. Never raises for a failure the
    user can act on: the job's events say what went wrong."""
    from worker import ml
    from worker.ml.gguf_export import export_folder

    quant = GgufQuantization(quantization)
    label = quant.value.upper()
    store = blob_store()
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        existing = gguf_export(session, job, quant)
        output_key = existing.blob_key if existing is not None else None
    if output_key is None:
        source = _source(job_id)
        if source is None:
            _event(
                job_id, f"GGUF {label} export failed: there is no merged model to convert", level="error", gguf="failed"
            )
            return
        source_key, step, name = source
        _event(job_id, f"Converting the model to GGUF {label}", gguf="started")
        output = store.path(job_output_key(job_id)) / f"gguf-{quant.value}"
        try:
            meta = export_folder(
                store.path(source_key),
                output,
                quantization=quant,
                name=name,
                on_progress=lambda message: _event(job_id, f"GGUF: {message}", gguf="progress"),
            )
        except Exception as failure:
            if not isinstance(failure, ml.TrainingError):
                log.exception("GGUF export of job %s failed", job_id)
            _event(job_id, f"GGUF {label} export failed: {failure}", level="error", gguf="failed")
            return
        with session_scope() as session:
            record_artifact(session, store, job_id=job_id, kind=gguf_kind(quant), step=step, path=output, meta=meta)
            add_event(
                session,
                session.get(Job, job_id),
                f"Saved the GGUF {label} export ({meta['gguf_bytes'] / 1e6:.1f} MB; "
                f"Modelfile chat template: {meta['chat_template']})",
                gguf="done",
            )
        output_key = store.key_of(output)
    if hub_repo:
        _push(job_id, store.path(output_key), hub_repo, label)


def _push(job_id: int, folder, hub_repo: str, label: str) -> None:
    from worker.ml.hub import HubError, push_folder

    settings = get_settings()
    if settings.hf_token is None:
        _event(job_id, f"Not pushed to {hub_repo}: no Hugging Face token is configured", level="warning", hub="refused")
        return
    _event(job_id, f"Pushing the GGUF {label} export to {hub_repo}", hub="started")
    try:
        url = push_folder(
            folder,
            hub_repo,
            token=settings.hf_token.get_secret_value(),
            endpoint=settings.hf_endpoint,
            commit_message=f"GGUF {label} export of tunelab job {job_id}",
        )
    except HubError as refusal:
        _event(job_id, f"Not pushed to {hub_repo}: {refusal}", level="warning", hub="refused")
        return
    _event(job_id, f"Pushed the GGUF {label} export to {url}", hub="pushed")
