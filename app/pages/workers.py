"""The Workers page: the workers, their GPUs and jobs, the queues. Kept fresh by polling /api/workers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.bodies import WorkersOut
from app.api.deps import PageAccessDep, SessionDep
from app.jobs.workers import workers_overview
from app.pages.rendering import page_json, render

router = APIRouter(include_in_schema=False)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, access: PageAccessDep, session: SessionDep):
    overview = WorkersOut.of(workers_overview(session, access)).model_dump(mode="json")
    return render(request, "workers.html", access=access, session=session, active="workers", data=page_json(overview))
