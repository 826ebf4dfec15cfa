"""Settings: API tokens, team members and roles, and (for administrators) new users and teams."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.accounts.teams import teams_by_id
from app.api.deps import PageAccessDep, SessionDep
from app.pages.rendering import page_json, render

router = APIRouter(include_in_schema=False)


@router.get("/settings", response_class=HTMLResponse)
def settings_page(request: Request, access: PageAccessDep, session: SessionDep):
    teams = teams_by_id(session, list(access.memberships))
    data = {
        "teams": [{"id": t.id, "name": t.name, "role": access.memberships[t.id].value} for t in teams],
        "current_team_id": access.current_team_id(),
        "is_admin": access.user.is_admin,
        "me": access.user.email,
    }
    return render(request, "settings.html", access=access, session=session, active="settings", data=page_json(data))
