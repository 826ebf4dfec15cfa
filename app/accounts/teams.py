"""Teams and their members. Keyword-only, no HTTP; they raise `AccountError` with a message
fit to show a user, and change nothing when they do."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import AccountError
from app.core.tables import Membership, Role, Team, User

_TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._\-]{0,63}$")


def check_team_name(name: str) -> str:
    name = name.strip()
    if not _TEAM_NAME.fullmatch(name):
        raise AccountError(
            "team names are 1-64 characters: letters, digits, spaces, '.', '_' or '-', starting with a letter or digit",
            422,
        )
    return name


def find_team(session: Session, name: str) -> Team | None:
    return session.scalar(select(Team).where(Team.name == name.strip()))


def create_team(session: Session, *, name: str) -> Team:
    name = check_team_name(name)
    if find_team(session, name) is not None:
        raise AccountError(f"a team named {name!r} already exists", 409)
    team = Team(name=name)
    session.add(team)
    session.flush()
    return team


def memberships_of(session: Session, user: User) -> list[Membership]:
    return list(session.scalars(select(Membership).where(Membership.user_id == user.id).join(Team).order_by(Team.name)))


def set_membership(session: Session, *, team: Team, user: User, role: Role) -> Membership:
    """Add a user to a team, or change their role there."""
    membership = session.scalar(select(Membership).where(Membership.team_id == team.id, Membership.user_id == user.id))
    if membership is None:
        membership = Membership(user_id=user.id, team_id=team.id, role=role)
        session.add(membership)
    else:
        if membership.role == Role.owner and role != Role.owner:
            _refuse_removing_last_owner(session, team)
        membership.role = role
    session.flush()
    return membership


def remove_membership(session: Session, *, team: Team, user_id: int) -> None:
    membership = session.scalar(select(Membership).where(Membership.team_id == team.id, Membership.user_id == user_id))
    if membership is None:
        raise AccountError("member not found", 404)
    if membership.role == Role.owner:
        _refuse_removing_last_owner(session, team)
    session.delete(membership)
    session.flush()


def _refuse_removing_last_owner(session: Session, team: Team) -> None:
    owners = session.scalar(
        select(func.count()).select_from(Membership).where(Membership.team_id == team.id, Membership.role == Role.owner)
    )
    if (owners or 0) <= 1:
        raise AccountError("a team needs at least one owner: make someone else owner first", 409)


def members_of(session: Session, team_id: int) -> list[tuple[int, str, Role]]:
    """(user id, email, role) of everyone in the team, by email."""
    rows = session.execute(
        select(User.id, User.email, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == team_id)
        .order_by(User.email)
    )
    return [(user_id, email, role) for user_id, email, role in rows]


def people_in(session: Session, team_ids: list[int]) -> list[str]:
    """Emails of everyone in any of these teams, sorted."""
    query = select(User.email).join(Membership, Membership.user_id == User.id).where(Membership.team_id.in_(team_ids))
    return sorted(set(session.scalars(query)))


def teams_by_id(session: Session, team_ids: list[int]) -> list[Team]:
    """These teams, by name."""
    return list(session.scalars(select(Team).where(Team.id.in_(team_ids)).order_by(Team.name)))


def create_team_owned_by(session: Session, *, name: str, owner: User) -> Team:
    """A new team with `owner` as its first owner."""
    team = create_team(session, name=name)
    session.add(Membership(user_id=owner.id, team_id=team.id, role=Role.owner))
    session.flush()
    return team


def set_current_team(session: Session, *, user: User, team: Team) -> None:
    """The team the user works in, in the browser, from now on (kept across sign-ins)."""
    user.current_team_id = team.id
    session.flush()
