"""What a caller may see and change: their role in each of their teams.

The one team-scoping door: every read of a team-owned row goes through `TeamAccess`::

    job = access.get(session, Job, job_id)   # NotFound for a missing job and another team's alike
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.core.errors import DomainError, Forbidden, NotFound
from app.core.tables import Membership, Role, Team, User

RowT = TypeVar("RowT")


@dataclass
class TeamAccess:
    user: User
    roles: dict[int, Role]
    preferred_team_id: int | None = None  # the team chosen in the browser, if any

    @property
    def team_ids(self) -> list[int]:
        return list(self.roles)

    def scope(self, query: Select, model) -> Select:
        """Restrict a query on a team-owned model to the caller's teams."""
        return query.where(model.team_id.in_(self.team_ids))

    def find(self, session: Session, model: type[RowT], object_id: int) -> RowT | None:
        """One team-owned row by id, or None when it is missing or another team's."""
        return session.scalar(self.scope(select(model).where(model.id == object_id), model))

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
        team = session.get(Team, team_id) if team_id in self.roles else None
        if team is None:
            raise NotFound("team not found")
        return team

    def require_write(self, team_id: int) -> None:
        role = self.roles.get(team_id)
        if role is None:
            raise NotFound("team not found")
        if not role.can_write:
            raise Forbidden("viewers cannot change anything in this team")

    def require_owner(self, team_id: int) -> None:
        """Owners (and administrators) manage a team's members."""
        if self.roles.get(team_id) != Role.owner and not self.user.is_admin:
            raise Forbidden("only the team's owners can manage its members")

    def current_team_id(self) -> int | None:
        """The team chosen in the browser, else the caller's first team; None for no team."""
        if self.preferred_team_id in self.roles:
            return self.preferred_team_id
        return min(self.roles) if self.roles else None

    def default_team(self) -> int:
        """The team a request that names none is counted in (a chat with a base model)."""
        team_id = self.current_team_id()
        if team_id is None:
            raise Forbidden("you belong to no team")
        return team_id

    def team_for_new(self, requested: int | None = None) -> int:
        """The team a new dataset or job goes to: the one asked for, else the team chosen in
        the browser, else the caller's only team they can write to."""
        if requested is not None:
            self.require_write(requested)
            return requested
        if self.preferred_team_id in self.roles:
            self.require_write(self.preferred_team_id)
            return self.preferred_team_id
        writable = [team_id for team_id, role in self.roles.items() if role.can_write]
        if len(writable) == 1:
            return writable[0]
        if not writable:
            raise Forbidden("you are a viewer in every team you belong to")
        raise DomainError("you belong to several teams: say which one with the `team_id` field")


def access_for(session: Session, user: User, *, preferred_team_id: int | None = None) -> TeamAccess:
    roles = dict(
        session.execute(select(Membership.team_id, Membership.role).where(Membership.user_id == user.id)).all()
    )
    return TeamAccess(user=user, roles=roles, preferred_team_id=preferred_team_id)
