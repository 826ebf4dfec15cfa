"""The team dashboard: every job of the current team, live; and the team switch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from app.accounts.teams import people_in, set_current_team
from app.api.bodies import JobOut
from app.api.deps import PageAccessDep, SessionDep
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
def switch_team(
    request: Request,
    access: PageAccessDep,
    session: SessionDep,
    team_id: Annotated[int, Form()],
    next: Annotated[str, Form(max_length=2000)] = "",
):
    """Work in another of one's teams: every page, list and form uses it from now on."""
    set_current_team(session, user=access.user, team=access.team(session, team_id))
    return RedirectResponse(_back_to(request, next), status_code=status.HTTP_303_SEE_OTHER)


def _local_path(url: str) -> str | None:
    """A path on this site ('/...'), or None for anything that could lead elsewhere."""
    if not url.startswith("/") or url.startswith("//") or "\\" in url:
        return None
    return url


def _back_to(request: Request, next_path: str) -> str:
    """Where to go after switching: `next` when it is a path of this site; else the page the
    switch was on, except that an object of the old team goes back to the list it came from."""
    if asked := _local_path(next_path):
        return asked
    base = str(request.base_url)
    referer = request.headers.get("referer", "")
    path = _local_path("/" + referer[len(base) :]) if referer.startswith(base) else None
    if path is None:
        return "/"
    plain = path.split("?", 1)[0]
    for prefix, listing in (("/jobs/", "/"), ("/datasets/", "/datasets")):
        if plain.startswith(prefix) and plain[len(prefix) :].isdigit():
            return listing
    return plain if plain in ("/jobs/new", "/playground", "/compare") else path
