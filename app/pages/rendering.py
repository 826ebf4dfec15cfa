"""What every signed-in page shares: the nav, the user's teams and the one they work in."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.accounts.teams import teams_by_id
from app.core.errors import NotFound
from app.pages.templating import templates

RowT = TypeVar("RowT")

# Inside <script>, "</script" ends the block and "<!--" switches the parser into a state
# where a later "<script" swallows the rest of the page; JSON's \u escapes keep every such
# character out of the markup while JSON.parse reads the same strings back.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def page_json(value: Any) -> str:
    """JSON for a <script type="application/json"> block, safe whatever strings it holds."""
    return json.dumps(value, default=str).translate(_SCRIPT_SAFE)


def in_current_team(request: Request, access: TeamAccess, session: Session, model: type[RowT], object_id: int):
    """A page's object of the current team, or (when it is in another of the user's teams) the
    page that offers to switch there; NotFound otherwise."""
    row = access.find(session, model, object_id)
    if row is not None:
        return row
    team_id = access.team_elsewhere(session, model, object_id)
    if team_id is None:
        raise NotFound(f"{model.__name__.lower()} not found")
    return render(
        request,
        "other_team.html",
        access=access,
        session=session,
        active="",
        kind=model.__name__.lower(),
        other_team_id=team_id,
        other_team_name=access.names.get(team_id, "?"),
    )


def render(
    request: Request,
    template: str,
    *,
    access: TeamAccess,
    session: Session,
    active: str,
    status_code: int = 200,
    **context: Any,
):
    teams = teams_by_id(session, list(access.memberships))
    current = access.current_team_id()
    writable = any(role.can_write for role in access.roles.values())
    return templates.TemplateResponse(
        request,
        template,
        {
            "user": access.user,
            "teams": teams,
            "current_team_id": current,
            "current_team_name": access.names.get(current) if current is not None else None,
            "active": active,
            "can_write": writable,
            "roles": {team_id: role.value for team_id, role in access.memberships.items()},
            **context,
        },
        status_code=status_code,
    )
