"""Downloads: adapters, checkpoints and merged models as streamed ZIP archives, the model
card, and the metrics as CSV with the columns of OpenAI's fine-tuning result files. The
merged model is built on request, by a worker."""

from __future__ import annotations

import csv
import io

import logging

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from sqlalchemy import select

from app import jobs
from app.archives import stream_zip
from app.artifacts import final_weights, merged_model
from app.config import get_settings
from app.deps import AccessDep, SessionDep
from app.models import Artifact, Job, JobMetric
from app.queue import enqueue_merge
from app.schemas import ArtifactOut
from app.spec import Method
from app.storage import BlobStore

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["downloads"])

# OpenAI's result-file columns first, then what tunelab also records.
METRIC_COLUMNS = [
    ("step", None), ("train_loss", "loss"), ("train_accuracy", "mean_token_accuracy"), ("valid_loss", "eval_loss"),
    ("valid_mean_token_accuracy", "eval_mean_token_accuracy"), ("epoch", "epoch"), ("learning_rate", "learning_rate"),
    ("grad_norm", "grad_norm"), ("tokens_per_second", "tokens_per_second"), ("peak_memory_mb", "peak_memory_mb"),
]  # fmt: skip


def _store() -> BlobStore:
    return BlobStore(get_settings().blobs_path)


def archive_name(job: Job, artifact: Artifact) -> str:
    suffix = f"-step-{artifact.step}" if artifact.kind == "checkpoint" else ""
    return f"tunelab-job-{job.id}-{artifact.kind}{suffix}"


def zip_response(job: Job, artifact: Artifact) -> StreamingResponse:
    directory = _store().path(artifact.blob_key)
    if not directory.is_dir():
        raise HTTPException(status.HTTP_410_GONE, "this artifact's files are no longer in the store")
    name = archive_name(job, artifact)
    return StreamingResponse(
        stream_zip(directory, name),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"', "Cache-Control": "no-store"},
    )


@router.get("/jobs/{job_id}/artifacts/{artifact_id}/archive", response_class=StreamingResponse)
def download_artifact(job_id: int, artifact_id: int, access: AccessDep, session: SessionDep) -> StreamingResponse:
    job = access.get(session, Job, job_id)
    artifact = session.scalar(select(Artifact).where(Artifact.id == artifact_id, Artifact.job_id == job.id))
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "artifact not found")
    return zip_response(job, artifact)


@router.get("/jobs/{job_id}/adapter.zip", response_class=StreamingResponse)
def download_adapter(job_id: int, access: AccessDep, session: SessionDep) -> StreamingResponse:
    """The trained adapter (the weights, for full fine-tuning): unzip it and load it with
    `PeftModel.from_pretrained(base_model, folder)`."""
    job = access.get(session, Job, job_id)
    artifact = final_weights(session, job)
    if artifact is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the job has no trained weights yet (it is {job.state.value})")
    return zip_response(job, artifact)


@router.get("/jobs/{job_id}/model-card", response_class=PlainTextResponse)
def model_card(job_id: int, access: AccessDep, session: SessionDep) -> PlainTextResponse:
    job = access.get(session, Job, job_id)
    artifact = final_weights(session, job)
    card = _store().path(artifact.blob_key) / "README.md" if artifact else None
    if card is None or not card.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "this job has no model card (yet)")
    return PlainTextResponse(card.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")


def metrics_csv_text(session, job: Job) -> str:
    """One row per step: train and eval values of the same step side by side."""
    by_step: dict[int, dict] = {}
    for point in session.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.step)):
        by_step.setdefault(point.step, {}).update(point.values)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column for column, _ in METRIC_COLUMNS])
    for step, values in sorted(by_step.items()):
        writer.writerow([step if key is None else _number(values.get(key)) for _, key in METRIC_COLUMNS])
    return buffer.getvalue()


def _number(value) -> str:
    return "" if value is None else f"{value:.6g}"


@router.get("/jobs/{job_id}/metrics.csv", response_class=PlainTextResponse)
def metrics_csv(job_id: int, access: AccessDep, session: SessionDep) -> PlainTextResponse:
    job = access.get(session, Job, job_id)
    return PlainTextResponse(metrics_csv_text(session, job), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="tunelab-job-{job.id}-metrics.csv"'})  # fmt: skip


@router.post("/jobs/{job_id}/merge", status_code=status.HTTP_202_ACCEPTED,
             responses={200: {"description": "The merged model exists already"},
                        409: {"description": "The job has no adapter to merge (yet)"}})  # fmt: skip
def build_merged_model(job_id: int, access: AccessDep, session: SessionDep) -> JSONResponse:
    """Build the base model with the job's adapter merged in, on a worker of the job's queue.
    Its progress shows in the job's events; when it is done it is the job's `merged` artifact,
    downloaded with the archive endpoint. Answers 200 with that artifact if it exists already."""
    job = access.get(session, Job, job_id, write=True)
    if job.method == Method.full.value:
        raise HTTPException(status.HTTP_409_CONFLICT, "full fine-tuning has no adapter to merge: its weights are the model")
    if not job.state.is_terminal:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the job is {job.state.value}: merge it once it has finished")
    if final_weights(session, job) is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "the job left no adapter to merge")
    if (merged := merged_model(session, job)) is not None:
        return JSONResponse({"status": "ready", "artifact": ArtifactOut.model_validate(merged).model_dump(mode="json")})
    jobs.add_event(session, job, f"Merged model requested by {access.user.email}", merge="queued")
    session.commit()
    try:
        enqueue_merge(job.id, job.queue)
    except Exception as error:  # noqa: BLE001 - any broker failure
        log.error("could not enqueue the merge of job %s: %s", job.id, error)
        jobs.add_event(session, job, "The merge could not be queued: the broker is unreachable", level="error",
                       merge="failed")  # fmt: skip
        session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the job queue is unreachable; try again later") from None
    return JSONResponse({"status": "queued", "artifact": None}, status_code=status.HTTP_202_ACCEPTED)
