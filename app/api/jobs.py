"""Fine-tuning jobs: launch, estimate, list, inspect, cancel, pause, resume; their events, metrics and artifacts.
The live streams are in `app.api.streams`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from app.api.bodies import ArtifactOut, JobEventOut, JobOut, JobPage, MetricOut
from app.api.deps import AccessDep, SessionDep
from app.contract.spec import TrainingSpec
from app.core.tables import Artifact, Job, JobEvent, JobMetric, JobState
from app.core.worker_registry import served_queues
from app.jobs import artifacts, timeline
from app.jobs.queries import list_jobs as query_jobs
from app.jobs.submission import JobSubmission, cancel_job, estimate_job_memory, pause_job, resume_job, submit_job
from app.jobs.workers import job_queue_warning, queue_warning

router = APIRouter(prefix="/api", tags=["jobs"])


@router.post("/jobs", response_model=JobOut, status_code=status.HTTP_201_CREATED)
def create_job(body: JobSubmission, access: AccessDep, session: SessionDep) -> JobOut:
    job = submit_job(session, access, body)
    return JobOut.of(job, warning=job_queue_warning(session, job))


class EstimateIn(BaseModel):
    spec: TrainingSpec
    dataset_id: int | None = None  # the data it would train on: a classification dataset trains a classifier


@router.post("/jobs/estimate")
def estimate_job(body: EstimateIn, access: AccessDep, session: SessionDep) -> dict:
    """GPU memory the job would need, before launching it, and whether it fits the GPUs of the
    live workers (`gpus_from: "workers"`), or common GPU sizes when no worker reports a GPU."""
    return estimate_job_memory(session, access, body.spec, body.dataset_id)


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    access: AccessDep,
    session: SessionDep,
    state: Annotated[list[JobState] | None, Query()] = None,
    created_by: Annotated[str | None, Query(max_length=254, description="Email of the person who launched it")] = None,
    after: Annotated[int | None, Query(description="Id of the last job of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    rows = query_jobs(session, access, states=state, created_by=created_by, before_id=after, limit=limit + 1)
    served = served_queues(session)
    return JobPage(
        data=[JobOut.of(job, warning=queue_warning(job, served)) for job in rows[:limit]], has_more=len(rows) > limit
    )


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: int, access: AccessDep, session: SessionDep) -> JobOut:
    job = access.get(session, Job, job_id)
    return JobOut.of(job, warning=job_queue_warning(session, job))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: int, access: AccessDep, session: SessionDep) -> JobOut:
    job = cancel_job(session, access, job_id)
    return JobOut.of(job, warning=job_queue_warning(session, job))


@router.post("/jobs/{job_id}/pause", response_model=JobOut)
def pause(job_id: int, access: AccessDep, session: SessionDep) -> JobOut:
    """A queued job pauses at once; a running one stops at its next step, keeping a checkpoint there."""
    job = pause_job(session, access, job_id)
    return JobOut.of(job, warning=job_queue_warning(session, job))


@router.post("/jobs/{job_id}/resume", response_model=JobOut)
def resume(job_id: int, access: AccessDep, session: SessionDep) -> JobOut:
    """A cancelled, failed or paused job goes back to the queue and continues from its last checkpoint."""
    job = resume_job(session, access, job_id)
    return JobOut.of(job, warning=job_queue_warning(session, job))


@router.get("/jobs/{job_id}/events", response_model=list[JobEventOut])
def list_events(
    job_id: int,
    access: AccessDep,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, description="Only events with a higher sequence number")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobEvent]:
    return timeline.events(session, access.get(session, Job, job_id), after_seq=after, limit=limit)


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
    return timeline.metrics(session, job, after_step=after_step, split=split, limit=limit)


@router.get("/jobs/{job_id}/checkpoints", response_model=list[ArtifactOut])
def list_checkpoints(job_id: int, access: AccessDep, session: SessionDep) -> list[Artifact]:
    return artifacts.checkpoints(session, access.get(session, Job, job_id).id)


@router.get("/jobs/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_artifacts(job_id: int, access: AccessDep, session: SessionDep) -> list[Artifact]:
    return artifacts.all_artifacts(session, access.get(session, Job, job_id).id)
