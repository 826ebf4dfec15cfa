"""Datasets: streamed upload with line-numbered validation, list, details, preview, delete."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select

from app import dataset_store
from app.config import get_settings
from app.datasets.preview import read_preview
from app.datasets.upload import UploadError, receive_upload
from app.datasets.validation import ValidationReport
from app.datasets.validator_process import ValidatorProcess
from app.deps import AccessDep, SessionDep, TeamAccess
from app.models import Dataset
from app.schemas import DatasetOut

router = APIRouter(prefix="/api", tags=["datasets"])


def dataset_out(dataset: Dataset, duplicate: bool = False) -> DatasetOut:
    fields = {name: getattr(dataset, name) for name in DatasetOut.model_fields if name not in ("created_by", "duplicate")}
    return DatasetOut(**fields, created_by=dataset.created_by.email if dataset.created_by else None, duplicate=duplicate)


def _form_team_id(fields: dict[str, str]) -> int | None:
    value = fields.get("team_id", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "team_id must be a number")
    return int(value)


class DatasetRejected(Exception):
    """The uploaded file has errors; `report.errors` lists them with their line numbers."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(f"the file has {report.error_count} error(s)")
        self.report = report


PURPOSES = ("fine-tune",)


async def receive_dataset(request: Request, access: TeamAccess, session) -> tuple[Dataset, bool]:
    """Stream, validate and store an upload (for this API and OpenAI's files API). Returns
    (dataset, duplicate); raises DatasetRejected when the file has errors, HTTPException for
    a bad request. Nothing is stored unless it returns."""
    if not any(role.can_write for role in access.roles.values()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "viewers cannot upload datasets")
    settings = get_settings()
    validator = functools.partial(ValidatorProcess, max_row_chars=settings.max_row_chars)
    store = dataset_store.blob_store()
    try:
        async with receive_upload(request, store, max_bytes=settings.max_upload_bytes,
                                  validator_factory=validator) as upload:  # fmt: skip
            if not upload.report.ok:
                raise DatasetRejected(upload.report)
            purpose = upload.fields.get("purpose") or PURPOSES[0]
            if purpose not in PURPOSES:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, f"purpose must be {' or '.join(PURPOSES)}")
            team_id = access.team_for_new(_form_team_id(upload.fields))
            return await run_in_threadpool(
                dataset_store.store_upload, session, upload=upload, team_id=team_id, user_id=access.user.id,
                name=upload.fields.get("name"), purpose=purpose,
            )  # fmt: skip
    except UploadError as error:
        raise HTTPException(error.status_code, str(error)) from None


@router.post("/datasets", response_model=DatasetOut, status_code=status.HTTP_201_CREATED,
             responses={422: {"description": "The file has errors: every one, with its line number"},
                        413: {"description": "The file is larger than the upload limit"}})  # fmt: skip
async def upload_dataset(request: Request, access: AccessDep, session: SessionDep):
    """Upload a JSONL file (multipart/form-data, field `file`; optional `name`, `team_id`).
    The format is detected from the rows. The same content uploaded again to the team
    returns the existing dataset (200, `duplicate: true`)."""
    try:
        dataset, duplicate = await receive_dataset(request, access, session)
    except DatasetRejected as rejected:
        return JSONResponse(rejected.report.error_body(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    body = await run_in_threadpool(lambda: dataset_out(dataset, duplicate).model_dump(mode="json"))
    return JSONResponse(body, status_code=status.HTTP_200_OK if duplicate else status.HTTP_201_CREATED)


@router.get("/datasets", response_model=list[DatasetOut])
def list_datasets(access: AccessDep, session: SessionDep) -> list[DatasetOut]:
    rows = session.scalars(access.scope(select(Dataset), Dataset).order_by(Dataset.id.desc()))
    return [dataset_out(row) for row in rows]


@router.get("/datasets/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: int, access: AccessDep, session: SessionDep) -> DatasetOut:
    return dataset_out(access.get(session, Dataset, dataset_id))


@router.get("/datasets/{dataset_id}/preview")
def preview_dataset(
    dataset_id: int,
    access: AccessDep,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict:
    """Rows `offset` to `offset + limit - 1` (0-based), each with its line number."""
    dataset = access.get(session, Dataset, dataset_id)
    path = dataset_store.blob_store().path(dataset.blob_key)
    if not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, "the dataset's file is no longer in the store")
    rows = read_preview(path, offset, limit, dataset.line_index or None)
    return {"format": dataset.format, "offset": offset, "limit": limit, "total": dataset.row_count, "rows": rows}


@router.get("/datasets/{dataset_id}/content", response_class=FileResponse)
def download_dataset(dataset_id: int, access: AccessDep, session: SessionDep) -> FileResponse:
    dataset = access.get(session, Dataset, dataset_id)
    path = dataset_store.blob_store().path(dataset.blob_key)
    if not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, "the dataset's file is no longer in the store")
    return FileResponse(path, media_type="application/jsonl", filename=dataset.filename)


@router.delete("/datasets/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: int, access: AccessDep, session: SessionDep) -> None:
    dataset = access.get(session, Dataset, dataset_id, write=True)
    if using := dataset_store.jobs_using(session, dataset):
        jobs = ", ".join(f"#{job_id}" for job_id in using)
        raise HTTPException(status.HTTP_409_CONFLICT, f"the dataset is in use by unfinished job(s) {jobs}; "
                            "cancel them or wait for them to finish")  # fmt: skip
    dataset_store.delete_dataset(session, dataset)
