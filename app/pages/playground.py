"""The playground: pick a finished job, and the same prompt goes to its model and to the base
model, the answers streaming side by side (through /v1/chat/completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import or_, select

from app import chat_models
from app.deps import PageAccessDep, SessionDep
from app.formats import CLASSIFICATION
from app.models import Dataset, Job, JobState, Team
from app.pages.common import page_json, render

router = APIRouter(include_in_schema=False)

FINISHED = (JobState.succeeded, JobState.cancelled, JobState.failed)


@router.get("/playground", response_class=HTMLResponse)
def playground(request: Request, access: PageAccessDep, session: SessionDep, job: int | None = None):
    names = dict(session.execute(select(Team.id, Team.name).where(Team.id.in_(access.team_ids))).all())
    classifiers = select(Dataset.id).where(Dataset.format == CLASSIFICATION)
    rows = session.scalars(
        access.scope(select(Job), Job)
        .where(Job.state.in_(FINISHED), or_(Job.dataset_id.is_(None), Job.dataset_id.not_in(classifiers)))
        .order_by(Job.id.desc()).limit(200)
    )  # fmt: skip
    choices = []
    for row in rows:
        model = chat_models.finished_job_model(session, row, names[row.team_id])
        if model is not None:
            checkpoint = row.state != JobState.succeeded
            choices.append({"id": row.id, "name": row.name, "state": row.state.value, "base_model": row.base_model,
                            "model": model, "checkpoint": checkpoint})  # fmt: skip
    chosen = job if any(choice["id"] == job for choice in choices) else (choices[0]["id"] if choices else None)
    return render(request, "playground.html", access=access, session=session, active="playground",
                  data=page_json({"jobs": choices, "chosen": chosen}), has_jobs=bool(choices))  # fmt: skip
