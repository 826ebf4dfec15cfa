"""Settings: API tokens, team members and roles, and (for administrators) new users and teams."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.deps import PageAccessDep, SessionDep
from app.models import Team
from app.pages.common import page_json, render

router = APIRouter(include_in_schema=False)


@router.get("/settings", response_class=HTMLResponse)
def settings_page(request: Request, access: PageAccessDep, session: SessionDep):
    teams = session.scalars(select(Team).where(Team.id.in_(access.team_ids)).order_by(Team.name)).all()
    data = {
        "teams": [{"id": t.id, "name": t.name, "role": access.roles[t.id].value} for t in teams],
        "is_admin": access.user.is_admin,
        "me": access.user.email,
    }
    return render(request, "settings.html", access=access, session=session, active="settings", data=page_json(data))
