"""Job pages: one job live, launching a job, comparing jobs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app import catalog
from app.api.jobs import job_out
from app.deps import PageAccessDep, SessionDep
from app.models import Artifact, Dataset, Job, JobEvent, JobMetric
from app.pages.common import page_json, render
from app.schemas import ArtifactOut, JobEventOut, MetricOut
from app.spec import TrainingSpec

router = APIRouter(include_in_schema=False)


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job(request: Request, access: PageAccessDep, session: SessionDep, clone: int | None = None):
    team_id = access.preferred_team_id if access.preferred_team_id in access.roles else None
    datasets = session.scalars(access.scope(select(Dataset), Dataset).order_by(Dataset.id.desc())).all()
    template = access.get(session, Job, clone) if clone else None
    data = {
        "models": [
            {"name": m.name, "parameters": m.parameters, "architecture": m.architecture, "source": m.source,
             "max_positions": m.max_positions, "chat_template": m.has_chat_template}
            for m in catalog.list_local_models()
        ],
        "datasets": [{"id": d.id, "name": d.name, "format": d.format, "rows": d.row_count, "team_id": d.team_id}
                     for d in datasets],
        "schema": TrainingSpec.model_json_schema(),
        "clone": {"spec": template.spec, "dataset_id": template.dataset_id, "queue": template.queue,
                  "validation_dataset_id": template.validation_dataset_id} if template else None,
        "team_id": team_id,
    }  # fmt: skip
    return render(request, "new_job.html", access=access, session=session, active="new-job", data=page_json(data))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: int, request: Request, access: PageAccessDep, session: SessionDep):
    job = access.get(session, Job, job_id)
    metrics = session.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.seq)).all()
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)).all()
    artifacts = session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.step)).all()
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    data = {
        "job": job_out(job).model_dump(mode="json"),
        "metrics": [MetricOut.model_validate(m, from_attributes=True).model_dump(mode="json") for m in metrics],
        "events": [JobEventOut.model_validate(e).model_dump(mode="json") for e in events],
        "artifacts": [ArtifactOut.model_validate(a).model_dump(mode="json") for a in artifacts],
        "last_seq": max([m.seq for m in metrics] + [e.seq for e in events] + [0]),
        "can_write": access.roles[job.team_id].can_write,
        "dataset": {"id": dataset.id, "name": dataset.name} if dataset else None,
    }
    return render(request, "job.html", access=access, session=session, active="dashboard", job=job,
                  data=page_json(data))  # fmt: skip


@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, access: PageAccessDep, session: SessionDep, jobs: str = ""):
    chosen = [int(part) for part in jobs.split(",") if part.strip().isdigit()][:12]
    rows = session.scalars(access.scope(select(Job), Job).order_by(Job.id.desc()).limit(200)).all()
    data = {"jobs": [{"id": j.id, "name": j.name, "state": j.state.value, "method": j.method, "base_model": j.base_model}
                     for j in rows],
            "chosen": [job_id for job_id in chosen if any(j.id == job_id for j in rows)]}  # fmt: skip
    return render(request, "compare.html", access=access, session=session, active="compare", data=page_json(data))
