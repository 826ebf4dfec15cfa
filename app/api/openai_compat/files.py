"""/v1/files: the team's datasets as OpenAI file objects (`file-<dataset id>`), uploaded with
the same streaming validation as POST /api/datasets. A finished job's metrics are its result
file (`file-results-<job id>`, a CSV with OpenAI's columns): retrieve and content only."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from app.accounts.access import TeamAccess
from app.api.deps import AccessDep, SessionDep, streamed_body
from app.core.tables import Dataset, Job
from app.datasets import team_datasets
from app.datasets.validation import ValidationReport
from app.jobs.exports import metrics_csv

from .common import cursor, number_in, page, public_id, unix
from .errors import OpenAIError, OpenAIRoute, not_found

router = APIRouter(route_class=OpenAIRoute)

FILE = "file"
RESULTS = "file-results"


def result_file_id(job: Job) -> str | None:
    """The id of a finished job's result file; None before it has finished a step."""
    return public_id(RESULTS, job.id) if job.state.is_terminal and job.step > 0 else None


def file_object(dataset: Dataset) -> dict:
    return {
        "id": public_id(FILE, dataset.id),
        "object": "file",
        "bytes": dataset.size_bytes,
        "created_at": unix(dataset.created_at),
        "filename": dataset.filename,
        "purpose": dataset.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def _result_file_object(job: Job, content: str) -> dict:
    return {
        "id": result_file_id(job),
        "object": "file",
        "bytes": len(content.encode()),
        "created_at": unix(job.finished_at),
        "filename": f"tunelab-job-{job.id}-results.csv",
        "purpose": "fine-tune-results",
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def _error_line(error: dict) -> str:
    """`line 3: message`, or `lines 3, 7, 9, ... (250 rows): message` for a message many rows share."""
    if error["count"] > 1:
        more = ", ..." if error["count"] > len(error["lines"]) else ""
        return f"lines {', '.join(map(str, error['lines']))}{more} ({error['count']} rows): {error['message']}"
    return f"line {error['line']}: {error['message']}" if error.get("line") else error["message"]


def _rejection_message(report: ValidationReport) -> str:
    lines = [_error_line(error) for error in report.errors]
    listed = sum(error["count"] for error in report.errors)
    if report.error_count > listed:
        lines.append(f"... and {report.error_count - listed} more")
    return f"The file has {report.error_count} error(s); nothing was stored.\n" + "\n".join(lines)


def _dataset(session, access: TeamAccess, file_id: str, *, write: bool = False) -> Dataset | None:
    number = number_in(file_id, FILE)
    if number is None:
        return None
    return access.get(session, Dataset, number, write=write)


def _finished_job(session, access: TeamAccess, file_id: str) -> Job:
    """The job whose result file this is; not found unless it has one."""
    number = number_in(file_id, RESULTS)
    job = access.find(session, Job, number) if number is not None else None
    if job is None or result_file_id(job) is None:
        raise not_found("file", file_id)
    return job


@router.post("/files")
async def create_file(request: Request, access: AccessDep, session: SessionDep) -> dict:
    """Upload a JSONL file (multipart: `file`, `purpose` = fine-tune). The same content
    uploaded again to the team answers the file it already has."""
    try:
        dataset, _duplicate = await team_datasets.receive_dataset(session, access, **streamed_body(request))
    except team_datasets.DatasetRejected as rejected:
        raise OpenAIError(400, _rejection_message(rejected.report), param="file", code="invalid_file") from None
    return file_object(dataset)


@router.get("/files")
def list_files(
    access: AccessDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict:
    rows = team_datasets.list_datasets(
        session, access, newest_first=order == "desc", after_id=cursor(after, FILE), purpose=purpose, limit=limit + 1
    )
    return page([file_object(dataset) for dataset in rows[:limit]], len(rows) > limit)


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, access: AccessDep, session: SessionDep) -> dict:
    if (dataset := _dataset(session, access, file_id)) is not None:
        return file_object(dataset)
    job = _finished_job(session, access, file_id)
    return _result_file_object(job, metrics_csv(session, job))


@router.delete("/files/{file_id}")
def delete_file(file_id: str, access: AccessDep, session: SessionDep) -> dict:
    dataset = _dataset(session, access, file_id, write=True)
    if dataset is None:
        _finished_job(session, access, file_id)
        raise OpenAIError(400, "a result file belongs to its job and cannot be deleted alone", param="file_id")
    if using := team_datasets.jobs_using(session, dataset):
        jobs = ", ".join(public_id("ftjob", job_id) for job_id in using)
        raise OpenAIError(409, f"the file is in use by unfinished fine-tuning job(s) {jobs}", param="file_id")
    team_datasets.delete_dataset(session, dataset)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, access: AccessDep, session: SessionDep) -> Response:
    dataset = await run_in_threadpool(_dataset, session, access, file_id)
    if dataset is None:
        job = await run_in_threadpool(_finished_job, session, access, file_id)
        text = await run_in_threadpool(metrics_csv, session, job)
        return Response(text, media_type="text/csv; charset=utf-8")
    path = team_datasets.dataset_file(dataset)
    return FileResponse(path, media_type="application/jsonl", filename=dataset.filename)
