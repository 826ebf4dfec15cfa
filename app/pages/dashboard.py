"""The team dashboard: every job of the caller's teams, live; and the team switcher."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from app.accounts.teams import people_in
from app.api.bodies import JobOut
from app.api.deps import SESSION_TEAM, PageAccessDep, SessionDep
from app.core.worker_registry import served_queues
from app.jobs.queries import list_jobs, loss_outlines
from app.jobs.workers import gpu_counts, queue_warning
from app.pages.rendering import page_json, render

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, access: PageAccessDep, session: SessionDep):
    rows = list_jobs(session, access, limit=200)
    served = served_queues(session)
    data = {
        "jobs": [JobOut.of(job, warning=queue_warning(job, served)).model_dump(mode="json") for job in rows],
        "losses": loss_outlines(session, [job.id for job in rows]),
        "people": people_in(session, access.team_ids),
    }
    return render(
        request,
        "dashboard.html",
        access=access,
        session=session,
        active="dashboard",
        data=page_json(data),
        has_jobs=bool(rows),
        gpus=gpu_counts(session),
    )


@router.post("/team")
def switch_team(request: Request, access: PageAccessDep, team_id: Annotated[int, Form()]):
    """Choose the team that new datasets and jobs go to."""
    if team_id not in access.roles:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "team not found")
    request.session[SESSION_TEAM] = team_id
    referer = request.headers.get("referer", "/")
    target = referer if referer.startswith(str(request.base_url)) else "/"
    return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
