"""The team dashboard: every job of the caller's teams, live."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from app import jobs
from app.api.jobs import job_out
from app.deps import SESSION_TEAM, PageAccessDep, SessionDep
from app.models import Job, Membership, User
from app.pages.common import page_json, render

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, access: PageAccessDep, session: SessionDep):
    rows = session.scalars(access.scope(select(Job), Job).order_by(Job.id.desc()).limit(200)).all()
    people = sorted(set(session.scalars(
        select(User.email).join(Membership, Membership.user_id == User.id).where(Membership.team_id.in_(access.team_ids))
    )))  # fmt: skip
    data = {
        "jobs": [job_out(job).model_dump(mode="json") for job in rows],
        "losses": jobs.loss_outlines(session, [job.id for job in rows]),
        "people": people,
    }
    return render(request, "dashboard.html", access=access, session=session, active="dashboard", data=page_json(data),
                  has_jobs=bool(rows))  # fmt: skip


@router.post("/team")
def switch_team(request: Request, access: PageAccessDep, team_id: Annotated[int, Form()]):
    """Choose the team that new datasets and jobs go to."""
    if team_id not in access.roles:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "team not found")
    request.session[SESSION_TEAM] = team_id
    referer = request.headers.get("referer", "/")
    target = referer if referer.startswith(str(request.base_url)) else "/"
    return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
