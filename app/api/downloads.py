"""Downloads: adapters, checkpoints, merged models and GGUF exports as streamed ZIP archives,
the model card, the metrics as CSV, and the requests that have a worker build the merged
model or a GGUF file."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from app.api.bodies import ArtifactOut, GgufExportIn
from app.api.deps import AccessDep, SessionDep
from app.core.blobs import blob_store
from app.core.errors import Conflict, NotFound
from app.core.tables import Artifact, Job
from app.jobs.archives import stream_zip
from app.jobs.artifacts import archive_name, artifact_of, final_weights
from app.jobs.exports import metrics_csv, request_gguf, request_merge

router = APIRouter(prefix="/api", tags=["downloads"])


def _zip_response(job: Job, artifact: Artifact) -> StreamingResponse:
    directory = blob_store().existing_directory(artifact.blob_key, "this artifact's folder")
    name = archive_name(job, artifact)
    return StreamingResponse(
        stream_zip(directory, name),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"', "Cache-Control": "no-store"},
    )


@router.get("/jobs/{job_id}/artifacts/{artifact_id}/archive", response_class=StreamingResponse)
def download_artifact(job_id: int, artifact_id: int, access: AccessDep, session: SessionDep) -> StreamingResponse:
    job = access.get(session, Job, job_id)
    return _zip_response(job, artifact_of(session, job, artifact_id))


@router.get("/jobs/{job_id}/adapter.zip", response_class=StreamingResponse)
def download_adapter(job_id: int, access: AccessDep, session: SessionDep) -> StreamingResponse:
    """The trained adapter (the weights, for full fine-tuning): unzip it and load it with
    `PeftModel.from_pretrained(base_model, folder)`."""
    job = access.get(session, Job, job_id)
    artifact = final_weights(session, job)
    if artifact is None:
        raise Conflict(f"the job has no trained weights yet (it is {job.state.value})")
    return _zip_response(job, artifact)


@router.get("/jobs/{job_id}/model-card", response_class=PlainTextResponse)
def model_card(job_id: int, access: AccessDep, session: SessionDep) -> PlainTextResponse:
    job = access.get(session, Job, job_id)
    artifact = final_weights(session, job)
    card = blob_store().path(artifact.blob_key) / "README.md" if artifact else None
    # A link could point anywhere on the worker's disk: only a plain file inside the folder is the card.
    if card is None or card.is_symlink() or not card.is_file():
        raise NotFound("this job has no model card (yet)")
    return PlainTextResponse(card.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")


@router.get("/jobs/{job_id}/metrics.csv", response_class=PlainTextResponse)
def download_metrics(job_id: int, access: AccessDep, session: SessionDep) -> PlainTextResponse:
    job = access.get(session, Job, job_id)
    disposition = f'attachment; filename="tunelab-job-{job.id}-metrics.csv"'
    return PlainTextResponse(
        metrics_csv(session, job), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": disposition}
    )


@router.post(
    "/jobs/{job_id}/merge",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"description": "The merged model exists already"},
        409: {"description": "The job has no adapter to merge (yet)"},
    },
)
def build_merged_model(job_id: int, access: AccessDep, session: SessionDep) -> JSONResponse:
    """Build the base model with the job's adapter merged in, on a worker of the job's queue.
    Its progress shows in the job's events; when it is done it is the job's `merged` artifact,
    downloaded with the archive endpoint. Answers 200 with that artifact if it exists already."""
    merged = request_merge(session, access, job_id)
    if merged is not None:
        return JSONResponse({"status": "ready", "artifact": ArtifactOut.model_validate(merged).model_dump(mode="json")})
    return JSONResponse({"status": "queued", "artifact": None}, status_code=status.HTTP_202_ACCEPTED)


@router.post(
    "/jobs/{job_id}/exports/gguf",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"description": "This GGUF export exists already (and no push was asked)"},
        409: {"description": "The job has no weights (yet), or a push was asked and no Hub token is configured"},
        422: {"description": "A base model GGUF export does not convert, or a malformed repository id"},
    },
)
def export_gguf(job_id: int, body: GgufExportIn, access: AccessDep, session: SessionDep) -> JSONResponse:
    """Write the job's model (base + adapter, merged first when needed) as one GGUF file at the
    quantisation asked, with an Ollama `Modelfile` beside it, on a worker of the job's queue.
    Its progress shows in the job's events (`data.gguf`); when done it is the job's
    `gguf-<quantization>` artifact, downloaded with the archive endpoint. Llama-family models only."""
    exported = request_gguf(session, access, job_id, body.quantization, body.hub_repo)
    if exported is not None:
        return JSONResponse(
            {"status": "ready", "artifact": ArtifactOut.model_validate(exported).model_dump(mode="json")}
        )
    return JSONResponse({"status": "queued", "artifact": None}, status_code=status.HTTP_202_ACCEPTED)
