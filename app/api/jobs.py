"""Fine-tuning jobs: launch, list, inspect, cancel, and follow live over SSE."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse

from app import catalog, jobs
from app.config import get_settings
from app.db import session_scope
from app.deps import AccessDep, SessionDep, TeamAccess
from app.estimates import estimate_memory
from app.formats import CLASSIFICATION
from app.live import Doorbell, job_channel, team_channel
from app.models import Artifact, Dataset, Job, JobEvent, JobMetric, JobState, User
from app.queue import enqueue_job
from app.schemas import ArtifactOut, JobEventOut, JobIn, JobOut, JobPage, MetricOut
from app.spec import TrainingSpec

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["jobs"])


def job_out(job: Job) -> JobOut:
    progress = min(1.0, job.step / job.total_steps) if job.total_steps else None
    return JobOut(
        id=job.id, name=job.name, suffix=job.suffix, team_id=job.team_id, created_by=job.created_by.email if job.created_by else None,
        state=job.state, base_model=job.base_model, method=job.method, dataset_id=job.dataset_id,
        validation_dataset_id=job.validation_dataset_id, queue=job.queue, spec=job.spec, metadata=job.user_metadata,
        error=job.error, attempts=job.attempts, step=job.step, total_steps=job.total_steps, progress=progress,
        eta_seconds=jobs.eta_seconds(job), epoch=job.epoch, train_loss=job.train_loss, eval_loss=job.eval_loss,
        trained_tokens=job.trained_tokens, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, updated_at=job.updated_at,
    )  # fmt: skip


def _field_error(loc: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, so a form can show the message beside its field."""
    return RequestValidationError([{"loc": ("body", *loc), "msg": message, "type": "value_error"}])


def _check_submission(session, access, body: JobIn, team_id: int) -> tuple[Dataset, Dataset | None]:
    """What pydantic cannot check alone: the datasets are the team's, the model is
    reachable, the method fits the data, and evaluation exists where it is asked for."""

    def team_dataset(dataset_id: int, field: str) -> Dataset:
        dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.team_id == team_id))
        if dataset is None:
            raise _field_error((field,), "dataset not found in this team")
        return dataset

    spec = body.spec
    dataset = team_dataset(body.dataset_id, "dataset_id")
    validation = team_dataset(body.validation_dataset_id, "validation_dataset_id") if body.validation_dataset_id else None
    if validation is not None and (validation.format == CLASSIFICATION) != (dataset.format == CLASSIFICATION):
        raise _field_error(("validation_dataset_id",), f"a {validation.format} file cannot validate {dataset.format} data")

    model = catalog.find_model(spec.base_model)
    if model is None and not get_settings().allow_hub_downloads:
        raise _field_error(("spec", "base_model"), f"model {spec.base_model!r} is not in the models directory or "
                           "the Hugging Face cache (workers here do not download models)")  # fmt: skip
    if model is not None and model.max_positions and spec.max_seq_length > model.max_positions:
        raise _field_error(("spec", "max_seq_length"),
                           f"{spec.base_model} handles at most {model.max_positions} tokens")  # fmt: skip

    has_eval = validation is not None or spec.eval_split > 0
    if spec.early_stopping_patience is not None and not has_eval:
        raise _field_error(("spec", "early_stopping_patience"),
                           "early stopping needs evaluation: give a validation dataset or an eval split")  # fmt: skip
    if spec.eval_steps is not None and not has_eval:
        raise _field_error(("spec", "eval_steps"), "evaluation needs a validation dataset or an eval split")
    return dataset, validation


@router.post("/jobs", response_model=JobOut, status_code=status.HTTP_201_CREATED)
def create_job(body: JobIn, access: AccessDep, session: SessionDep) -> JobOut:
    return job_out(submit_job(session, access, body))


def submit_job(session, access: TeamAccess, body: JobIn) -> Job:
    """Check a submission, store the job and enqueue it (for this API and OpenAI's). Raises
    RequestValidationError (beside the field at fault), or HTTPException."""
    team_id = access.team_for_new(body.team_id)
    dataset, _validation = _check_submission(session, access, body, team_id)
    spec: TrainingSpec = body.spec
    job = Job(
        team_id=team_id, created_by_id=access.user.id,
        name=body.name or f"{spec.base_model} · {spec.method.value} · {dataset.name}", suffix=body.suffix,
        base_model=spec.base_model, method=spec.method.value, spec=spec.model_dump(mode="json"),
        dataset_id=dataset.id, validation_dataset_id=body.validation_dataset_id, queue=body.queue,
        user_metadata=body.metadata,
    )  # fmt: skip
    session.add(job)
    session.flush()
    jobs.add_event(session, job, f"Job created by {access.user.email}", state=JobState.queued.value)
    # The worker must find the row when it gets the id: commit first, then enqueue.
    session.commit()
    try:
        enqueue_job(job.id, job.queue)
    except Exception as error:  # noqa: BLE001 - any broker failure
        log.error("could not enqueue job %s: %s", job.id, error)
        jobs.transition(session, job, JobState.failed, error="The job queue (broker) could not be reached; "
                        "nothing was started. Try again when /healthz is ok.")  # fmt: skip
        session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the job queue is unreachable; the job was not started")
    return job


class EstimateIn(BaseModel):
    spec: TrainingSpec


@router.post("/jobs/estimate")
def estimate_job_memory(body: EstimateIn, access: AccessDep) -> dict:
    """GPU memory the job would need, before launching it."""
    model = catalog.find_model(body.spec.base_model)
    if model is None:
        raise _field_error(("spec", "base_model"), f"model {body.spec.base_model!r} is not in the models directory")
    return estimate_memory(model, body.spec).as_dict()


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    access: AccessDep,
    session: SessionDep,
    state: Annotated[list[JobState] | None, Query()] = None,
    created_by: Annotated[str | None, Query(max_length=254, description="Email of the person who launched it")] = None,
    after: Annotated[int | None, Query(description="Id of the last job of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    query = access.scope(select(Job), Job).order_by(Job.id.desc()).limit(limit + 1)
    if state:
        query = query.where(Job.state.in_(state))
    if created_by:
        query = query.join(User, User.id == Job.created_by_id).where(User.email == created_by.strip().lower())
    if after is not None:
        query = query.where(Job.id < after)
    rows = session.scalars(query).all()
    return JobPage(data=[job_out(job) for job in rows[:limit]], has_more=len(rows) > limit)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: int, access: AccessDep, session: SessionDep) -> JobOut:
    return job_out(access.get(session, Job, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: int, access: AccessDep, session: SessionDep) -> JobOut:
    return job_out(cancel(session, access, job_id))


def cancel(session, access: TeamAccess, job_id: int) -> Job:
    """Cancel a job (for this API and OpenAI's); asking twice is not an error, asking after
    it has finished is (409)."""
    job = access.get(session, Job, job_id, write=True)
    try:
        jobs.request_cancel(session, job)
    except jobs.IllegalTransition:
        if job.state not in (JobState.cancelling, JobState.cancelled):
            raise HTTPException(status.HTTP_409_CONFLICT, f"the job has already {job.state.value}") from None
    return job


@router.get("/jobs/{job_id}/events", response_model=list[JobEventOut])
def list_events(
    job_id: int,
    access: AccessDep,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, description="Only events with a higher sequence number")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobEvent]:
    job = access.get(session, Job, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.seq > after).order_by(JobEvent.seq).limit(limit)
    return list(session.scalars(query))


@router.get("/jobs/{job_id}/metrics", response_model=list[MetricOut])
def list_metrics(
    job_id: int,
    access: AccessDep,
    session: SessionDep,
    after_step: Annotated[int, Query(ge=-1, description="Only points after this step")] = -1,
    split: Annotated[str | None, Query(pattern="^(train|eval)$")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> list[JobMetric]:
    job = access.get(session, Job, job_id)
    query = select(JobMetric).where(JobMetric.job_id == job.id, JobMetric.step > after_step)
    if split:
        query = query.where(JobMetric.split == split)
    return list(session.scalars(query.order_by(JobMetric.step, JobMetric.split).limit(limit)))


@router.get("/jobs/{job_id}/checkpoints", response_model=list[ArtifactOut])
def list_checkpoints(job_id: int, access: AccessDep, session: SessionDep) -> list[Artifact]:
    job = access.get(session, Job, job_id)
    query = select(Artifact).where(Artifact.job_id == job.id, Artifact.kind == "checkpoint").order_by(Artifact.step)
    return list(session.scalars(query))


@router.get("/jobs/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_artifacts(job_id: int, access: AccessDep, session: SessionDep) -> list[Artifact]:
    job = access.get(session, Job, job_id)
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.id)))


# ---- live streams --------------------------------------------------------------------------


def _stream_item(item: JobEvent | JobMetric) -> dict[str, Any]:
    if isinstance(item, JobMetric):
        payload = MetricOut.model_validate(item, from_attributes=True).model_dump(mode="json")
        return {"id": str(item.seq), "event": "metric", "data": json.dumps(payload)}
    payload = JobEventOut.model_validate(item).model_dump(mode="json")
    return {"id": str(item.seq), "event": "event", "data": json.dumps(payload)}


def _read_job_stream(job_id: int, after_seq: int) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    with session_scope() as session:
        items = jobs.stream_items_after(session, job_id, after_seq)
        job = session.get(Job, job_id)
        snapshot = job_out(job).model_dump(mode="json")
        return [_stream_item(item) for item in items], (items[-1].seq if items else after_seq), snapshot


def _resume_point(last_event_id: str | None, after: int | None) -> int:
    for value in (last_event_id, after):
        if value is not None and str(value).strip().isdigit():
            return int(str(value).strip())
    return 0


@router.get("/jobs/{job_id}/stream")
async def stream_job(
    job_id: int,
    request: Request,
    access: AccessDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, description="Like Last-Event-ID, for clients that cannot set it")] = None,
) -> EventSourceResponse:
    """Server-sent events: every stored metric point (`metric`) and event (`event`) after
    Last-Event-ID, each with its sequence number as the event id, then the live ones;
    `progress` snapshots of the job as it moves; `end` when the job has finished."""
    job = await run_in_threadpool(access.get, session, Job, job_id)
    start = _resume_point(last_event_id, after)

    async def events():
        last_seq, last_progress = start, None
        async with Doorbell(job_channel(job.id)) as bell:
            while True:
                items, last_seq_read, snapshot = await run_in_threadpool(_read_job_stream, job.id, last_seq)
                for item in items:
                    yield item
                last_seq = last_seq_read
                progress = (snapshot["state"], snapshot["step"], snapshot["total_steps"])
                if progress != last_progress:
                    last_progress = progress
                    yield {"event": "progress", "data": json.dumps(snapshot)}
                if JobState(snapshot["state"]).is_terminal and not items:
                    yield {"event": "end", "data": json.dumps({"state": snapshot["state"]})}
                    return
                if len(items) < 1000:  # a full page means more is waiting: read on at once
                    await bell.wait()

    return EventSourceResponse(events(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _read_team_jobs(team_ids: list[int], since) -> list[Job]:
    with session_scope() as session:
        query = select(Job).where(Job.team_id.in_(team_ids)).order_by(Job.id.desc())
        query = query.where(Job.updated_at >= since) if since is not None else query.limit(200)
        return [job_out(job) for job in session.scalars(query)]


@router.get("/stream")
async def stream_team(request: Request, access: AccessDep) -> EventSourceResponse:
    """Server-sent events for the dashboard: a `snapshot` of the teams' recent jobs, then a
    `job` event with the job's new state each time one changes (state, progress, losses)."""
    from datetime import timedelta

    team_ids = access.team_ids

    async def events():
        sent: dict[int, tuple] = {}
        since = None
        async with Doorbell(*(team_channel(team_id) for team_id in team_ids)) as bell:
            while True:
                rows = await run_in_threadpool(_read_team_jobs, team_ids, since)
                if since is None:
                    yield {"event": "snapshot", "data": json.dumps([row.model_dump(mode="json") for row in rows])}
                changed = []
                for row in rows:
                    version = (row.state, row.step, row.train_loss, row.eval_loss, row.updated_at)
                    if sent.get(row.id) != version:
                        sent[row.id] = version
                        changed.append(row)
                if since is not None:
                    for row in reversed(changed):
                        yield {"event": "job", "data": row.model_dump_json()}
                newest = max((row.updated_at for row in rows), default=None)
                if newest is not None:
                    # Clocks of app and worker hosts may differ a little: look back a few seconds.
                    since = max(since, newest - timedelta(seconds=5)) if since else newest - timedelta(seconds=5)
                elif since is None:
                    from app.models import utcnow

                    since = utcnow() - timedelta(seconds=5)
                await bell.wait()

    return EventSourceResponse(events(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
