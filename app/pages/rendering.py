"""What every signed-in page shares: the nav, the teams and the one chosen for new work."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.accounts.teams import teams_by_id
from app.pages.templating import templates

# Inside <script>, "</script" ends the block and "<!--" switches the parser into a state
# where a later "<script" swallows the rest of the page; JSON's \u escapes keep every such
# character out of the markup while JSON.parse reads the same strings back.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def page_json(value: Any) -> str:
    """JSON for a <script type="application/json"> block, safe whatever strings it holds."""
    return json.dumps(value, default=str).translate(_SCRIPT_SAFE)


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
    teams = teams_by_id(session, access.team_ids)
    current = access.preferred_team_id if access.preferred_team_id in access.roles else (teams[0].id if teams else None)
    writable = any(role.can_write for role in access.roles.values())
    return templates.TemplateResponse(
        request,
        template,
        {
            "user": access.user,
            "teams": teams,
            "current_team_id": current,
            "active": active,
            "can_write": writable,
            "roles": {team_id: role.value for team_id, role in access.roles.items()},
            **context,
        },
        status_code=status_code,
    )
