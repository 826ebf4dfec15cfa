"""The playground: pick a finished job and hold a conversation with its model and with the base
model side by side, the answers streaming (through /v1/chat/completions); or, for a classifier
job, type a text and see the probability of each label (through /api/jobs/{id}/classify); or,
for a tagger, question answerer or encoder-decoder job, see the entities of a sentence, the
answer span of a question in a context, or the generated target (through /api/jobs/{id}/predict)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.deps import PageAccessDep, SessionDep
from app.chat.model_names import finished_job_models
from app.pages.rendering import page_json, render

router = APIRouter(include_in_schema=False)


@router.get("/playground", response_class=HTMLResponse)
def playground(request: Request, access: PageAccessDep, session: SessionDep, job: int | None = None):
    choices = [
        {
            "id": found.job.id,
            "name": found.job.name,
            "state": found.job.state.value,
            "base_model": found.job.base_model,
            "model": found.model,
            "checkpoint": found.checkpoint,
            "classifier": found.classifier,
            "task": found.task,
        }
        for found in finished_job_models(session, access)
    ]
    chosen = job if any(choice["id"] == job for choice in choices) else (choices[0]["id"] if choices else None)
    data = page_json({"jobs": choices, "chosen": chosen})
    return render(
        request,
        "playground.html",
        access=access,
        session=session,
        active="playground",
        data=data,
        has_jobs=bool(choices),
    )
