"""The playground: pick a finished job, and the same prompt goes to its model and to the base
model, the answers streaming side by side (through /v1/chat/completions)."""

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
            "id": row.id,
            "name": row.name,
            "state": row.state.value,
            "base_model": row.base_model,
            "model": model,
            "checkpoint": is_checkpoint,
        }
        for row, model, is_checkpoint in finished_job_models(session, access)
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
