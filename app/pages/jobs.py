"""Job pages: one job live, launching a job, comparing jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from app.api.bodies import ArtifactOut, EvaluationOut, JobEventOut, JobOut, MetricOut, SamplesOut
from app.api.deps import PageAccessDep, SessionDep
from app.chat.catalog import list_local_models
from app.contract.formats import OBJECTIVE_FORMATS
from app.contract.spec import TrainingSpec
from app.core.tables import Dataset, Job
from app.datasets.team_datasets import list_datasets
from app.jobs import artifacts, timeline
from app.jobs.evaluations import evaluations
from app.jobs.exports import gguf_unavailable
from app.jobs.queries import continuations, list_jobs
from app.jobs.workers import job_queue_warning
from app.pages.rendering import in_current_team, page_json, render

router = APIRouter(include_in_schema=False)


def _model_choice(model) -> dict:
    return {
        "name": model.name,
        "parameters": model.parameters,
        "architecture": model.architecture,
        "source": model.source,
        "max_positions": model.max_positions,
        "chat_template": model.has_chat_template,
    }


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job(
    request: Request,
    access: PageAccessDep,
    session: SessionDep,
    clone: int | None = None,
    continue_from: Annotated[int | None, Query(alias="continue")] = None,
):
    """The launch form; `clone` prefills it from a job, `continue` from a succeeded job that the new one continues."""
    team_id = access.current_team_id()
    template = access.get(session, Job, continue_from or clone) if (continue_from or clone) else None
    clone_of = None
    if template is not None:  # a job of the current team (another team's answers 404), so are its datasets
        clone_of = {
            "spec": template.spec,
            "dataset_id": template.dataset_id,
            "queue": template.queue,
            "validation_dataset_id": template.validation_dataset_id,
        }
    parent = None
    if continue_from is not None:
        parent = {"id": template.id, "name": template.name, "method": template.method, "state": template.state.value}
        team_id = template.team_id
    data = {
        "models": [_model_choice(model) for model in list_local_models()],
        "datasets": [
            {"id": d.id, "name": d.name, "format": d.format, "rows": d.row_count, "team_id": d.team_id}
            for d in list_datasets(session, access)
        ],
        "schema": TrainingSpec.model_json_schema(),
        "objective_formats": {objective: sorted(fits) for objective, fits in OBJECTIVE_FORMATS.items()},
        "clone": clone_of,
        "parent": parent,
        "team_id": team_id,
    }
    return render(request, "new_job.html", access=access, session=session, active="new-job", data=page_json(data))


def _spec_used(spec: dict) -> dict:
    """The values the job trains with; a spec stored by an older version that no longer
    validates is shown as it was stored."""
    try:
        return TrainingSpec.model_validate(spec).values_used()
    except ValidationError:
        return spec


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: int, request: Request, access: PageAccessDep, session: SessionDep):
    job = in_current_team(request, access, session, Job, job_id)
    if not isinstance(job, Job):
        return job
    metrics = timeline.metrics(session, job)
    events = timeline.events(session, job)
    samples = timeline.samples(session, job)
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    warning = job_queue_warning(session, job)
    data = {
        "job": JobOut.of(job, warning=warning).model_dump(mode="json"),
        "spec_used": _spec_used(job.spec),
        "metrics": [MetricOut.model_validate(m, from_attributes=True).model_dump(mode="json") for m in metrics],
        "events": [JobEventOut.model_validate(e).model_dump(mode="json") for e in events],
        "artifacts": [
            ArtifactOut.model_validate(a).model_dump(mode="json")
            for a in sorted(artifacts.all_artifacts(session, job.id), key=lambda a: a.step)
        ],
        "samples": [SamplesOut.model_validate(s).model_dump(mode="json") for s in samples],
        "evaluations": [EvaluationOut.of(e).model_dump(mode="json") for e in evaluations(session, job)],
        "last_seq": max([m.seq for m in metrics] + [e.seq for e in events] + [s.seq for s in samples] + [0]),
        "can_write": access.roles[job.team_id].can_write,
        "dataset": {"id": dataset.id, "name": dataset.name} if dataset else None,
        # Why the page offers no GGUF export (a classifier, a task head, a base model not converted).
        "gguf_refusal": refusal.message if (refusal := gguf_unavailable(session, job)) else None,
    }
    return render(
        request,
        "job.html",
        access=access,
        session=session,
        active="dashboard",
        job=job,
        queue_warning=warning,
        continued_as=continuations(session, job),
        data=page_json(data),
    )


@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, access: PageAccessDep, session: SessionDep, jobs: str = ""):
    chosen = [int(part) for part in jobs.split(",") if part.strip().isdigit()][:12]
    rows = list_jobs(session, access, limit=200)
    data = {
        "jobs": [
            {"id": j.id, "name": j.name, "state": j.state.value, "method": j.method, "base_model": j.base_model}
            for j in rows
        ],
        "chosen": [job_id for job_id in chosen if any(j.id == job_id for j in rows)],
    }
    return render(request, "compare.html", access=access, session=session, active="compare", data=page_json(data))
