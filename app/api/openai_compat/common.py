"""What the /v1 routers share: public ids, timestamps, list pages, team names."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.accounts.teams import teams_by_id

from .errors import OpenAIError


def public_id(prefix: str, number: int) -> str:
    """`file-12`, `ftjob-3`, `ftckpt-7`: OpenAI-style ids over tunelab's row ids."""
    return f"{prefix}-{number}"


def number_in(value: str, prefix: str) -> int | None:
    """The row id in a public id of this kind, or None when it is not one."""
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d{{1,18}})", value)
    return int(match[1]) if match else None


def cursor(value: str | None, prefix: str) -> int | None:
    """An `after` parameter: the public id of the last item of the previous page."""
    if value is None:
        return None
    number = number_in(value, prefix)
    if number is None:
        raise OpenAIError(400, f"after must be an id like {prefix}-123", param="after")
    return number


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }


def team_names(session: Session, access: TeamAccess) -> dict[int, str]:
    """Names of the caller's teams, which model names carry."""
    return {team.id: team.name for team in teams_by_id(session, access.team_ids)}
