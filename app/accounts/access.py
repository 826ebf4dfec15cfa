"""What a caller may see and change: their role in each of their teams.

The one team-scoping door: every read of a team-owned row goes through `TeamAccess`::

    job = access.get(session, Job, job_id)   # NotFound for a missing job and another team's alike

A request works in some of the caller's teams (`roles`): a browser in its current team (one
at a time, chosen with the header's switch), a token bound to a team in that team, an unbound
token in all of its user's teams. `memberships` are every team the caller may name as a team
(to list and manage members): all of the user's, except through a bound token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.core.errors import DomainError, Forbidden, NotFound
from app.core.tables import Membership, Role, Team, User

RowT = TypeVar("RowT")


@dataclass
class TeamAccess:
    user: User
    roles: dict[int, Role]  # the teams this request works in, and the caller's role in each
    memberships: dict[int, Role] = field(default_factory=dict)  # every team the caller may name
    names: dict[int, str] = field(default_factory=dict)  # team names, by id
    bound_team_id: int | None = None  # the team of the API token the request came with, if bound

    def __post_init__(self) -> None:
        self.memberships = self.memberships or dict(self.roles)

    @property
    def team_ids(self) -> list[int]:
        return list(self.roles)

    def scope(self, query: Select, model) -> Select:
        """Restrict a query on a team-owned model to the caller's teams."""
        return query.where(model.team_id.in_(self.team_ids))

    def find(self, session: Session, model: type[RowT], object_id: int) -> RowT | None:
        """One team-owned row by id, or None when it is missing or another team's."""
        return session.scalar(self.scope(select(model).where(model.id == object_id), model))

    def team_elsewhere(self, session: Session, model, object_id: int) -> int | None:
        """Which other of the caller's teams holds this row (a link shared there), if any: a
        browser works in one team at a time, and offers to switch."""
        others = [team_id for team_id in self.memberships if team_id not in self.roles]
        if not others:
            return None
        return session.scalar(select(model.team_id).where(model.id == object_id, model.team_id.in_(others)))

    def get(self, session: Session, model: type[RowT], object_id: int, *, write: bool = False) -> RowT:
        """One team-owned row by id. NotFound when it is missing or belongs to another team
        (the caller cannot tell them apart); Forbidden when `write` and the caller is a viewer there."""
        row = self.find(session, model, object_id)
        if row is None:
            raise NotFound(f"{model.__name__.lower()} not found")
        if write:
            self.require_write(row.team_id)
        return row

    def team(self, session: Session, team_id: int) -> Team:
        """One of the caller's teams; NotFound for any other."""
        team = session.get(Team, team_id) if team_id in self.memberships else None
        if team is None:
            raise NotFound("team not found")
        return team

    def require_write(self, team_id: int) -> None:
        role = self.roles.get(team_id)
        if role is None:
            raise NotFound("team not found")
        if not role.can_write:
            raise Forbidden("viewers cannot change anything in this team")

    def require_owner(self, team_id: int, what: str = "its members") -> None:
        """Owners (and administrators) manage a team's members (and `what` else is theirs to manage)."""
        if self.memberships.get(team_id) != Role.owner and not self.user.is_admin:
            raise Forbidden(f"only the team's owners can manage {what}")

    def team_for_token(self, session: Session, requested: int | None) -> Team | None:
        """The team a new API token is bound to: the one asked for (one of the caller's). A
        request made with a bound token can only make tokens bound to the same team."""
        if self.bound_team_id is not None and requested is None:
            requested = self.bound_team_id
        return self.team(session, requested) if requested is not None else None

    def current_team_id(self) -> int | None:
        """The team the request works in when it works in one; else the caller's first team;
        None for no team."""
        return min(self.roles) if self.roles else None

    def default_team(self) -> int:
        """The team a request that names none is counted in (a chat with a base model)."""
        team_id = self.current_team_id()
        if team_id is None:
            raise Forbidden("you belong to no team")
        return team_id

    def team_for_new(self, requested: int | None = None) -> int:
        """The team a new dataset or job goes to: the one asked for, else the one the request
        works in (the browser's current team, a bound token's team), else the caller's only
        team they can write to."""
        if requested is not None:
            self.require_write(requested)
            return requested
        writable = sorted(team_id for team_id, role in self.roles.items() if role.can_write)
        if len(writable) == 1:
            return writable[0]
        if not self.roles:
            raise Forbidden("you belong to no team (or no longer to this token's team)")
        if not writable:
            if len(self.roles) == 1:
                raise Forbidden("viewers cannot change anything in this team")
            raise Forbidden("you are a viewer in every team you belong to")
        choices = " or ".join(f"{team_id} ({self.names.get(team_id, '?')})" for team_id in writable)
        raise DomainError(
            f"you belong to several teams: add the `team_id` field with {choices} to the request "
            "(a form field for an upload), or use an API token bound to one team",
            code="team_required",
        )


def access_for(session: Session, user: User, *, bound_team_id: int | None = None) -> TeamAccess:
    """The caller's access in all of their teams, or (`bound_team_id`, a token bound to a team)
    in that team alone."""
    rows = session.execute(
        select(Membership.team_id, Membership.role, Team.name)
        .join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id == user.id)
    ).all()
    memberships = {team_id: role for team_id, role, _name in rows}
    names = {team_id: name for team_id, _role, name in rows}
    if bound_team_id is not None:
        memberships = {team_id: role for team_id, role in memberships.items() if team_id == bound_team_id}
    return TeamAccess(
        user=user, roles=dict(memberships), memberships=memberships, names=names, bound_team_id=bound_team_id
    )


def browser_access(session: Session, user: User, *, asked_team_id: int | None = None) -> TeamAccess:
    """A browser works in one team at a time: the one its page says, else the user's current
    team (while they are in it), else their first. A page of a team the user has left gets
    NotFound: its uploads and launches must not land in another team unnoticed."""
    access = access_for(session, user)
    if asked_team_id is not None and asked_team_id not in access.memberships:
        raise NotFound("team not found: you are no longer in the team this page was opened in; reload the page")
    chosen = next(
        (team_id for team_id in (asked_team_id, user.current_team_id) if team_id in access.memberships),
        min(access.memberships) if access.memberships else None,
    )
    access.roles = {chosen: access.memberships[chosen]} if chosen is not None else {}
    return access
