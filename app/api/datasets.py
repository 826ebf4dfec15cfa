"""Datasets: streamed upload with line-numbered validation, list, details, preview, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from app.api.bodies import DatasetOut
from app.api.deps import AccessDep, SessionDep, streamed_body
from app.core.errors import Conflict
from app.core.tables import Dataset
from app.datasets import team_datasets
from app.datasets.preview import read_preview

router = APIRouter(prefix="/api", tags=["datasets"])


@router.post(
    "/datasets",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        422: {"description": "The file has errors: every one, with its line number"},
        413: {"description": "The file is larger than the upload limit"},
    },
)
async def upload_dataset(request: Request, access: AccessDep, session: SessionDep):
    """Upload a JSONL file (multipart/form-data, field `file`; optional `name`, `team_id`).
    The format is detected from the rows. The same content uploaded again to the team
    returns the existing dataset (200, `duplicate: true`)."""
    try:
        dataset, duplicate = await team_datasets.receive_dataset(session, access, **streamed_body(request))
    except team_datasets.DatasetRejected as rejected:
        return JSONResponse(rejected.report.error_body(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    body = await run_in_threadpool(lambda: DatasetOut.of(dataset, duplicate).model_dump(mode="json"))
    return JSONResponse(body, status_code=status.HTTP_200_OK if duplicate else status.HTTP_201_CREATED)


@router.get("/datasets", response_model=list[DatasetOut])
def list_datasets(access: AccessDep, session: SessionDep) -> list[DatasetOut]:
    return [DatasetOut.of(row) for row in team_datasets.list_datasets(session, access)]


@router.get("/datasets/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: int, access: AccessDep, session: SessionDep) -> DatasetOut:
    return DatasetOut.of(access.get(session, Dataset, dataset_id))


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
    rows = read_preview(team_datasets.dataset_file(dataset), offset, limit, dataset.line_index or None)
    return {"format": dataset.format, "offset": offset, "limit": limit, "total": dataset.row_count, "rows": rows}


@router.get("/datasets/{dataset_id}/content", response_class=FileResponse)
def download_dataset(dataset_id: int, access: AccessDep, session: SessionDep) -> FileResponse:
    dataset = access.get(session, Dataset, dataset_id)
    return FileResponse(team_datasets.dataset_file(dataset), media_type="application/jsonl", filename=dataset.filename)


@router.delete("/datasets/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: int, access: AccessDep, session: SessionDep) -> None:
    dataset = access.get(session, Dataset, dataset_id, write=True)
    if using := team_datasets.jobs_using(session, dataset):
        jobs = ", ".join(f"#{job_id}" for job_id in using)
        raise Conflict(f"the dataset is in use by unfinished job(s) {jobs}; cancel them or wait for them to finish")
    team_datasets.delete_dataset(session, dataset)
