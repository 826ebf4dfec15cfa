"""Teams and their members; creating users (administrators only)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from app import accounts
from app.deps import AccessDep, AdminUser, SessionDep
from app.models import Membership, Role, Team, User
from app.schemas import MemberIn, MemberOut, TeamIn, TeamRoleOut, UserIn, UserOut

router = APIRouter(prefix="/api", tags=["teams"])


def _team(session, access, team_id: int) -> Team:
    team = session.get(Team, team_id) if team_id in access.roles else None
    if team is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "team not found")
    return team


def _require_owner(access, team_id: int) -> None:
    if access.roles.get(team_id) != Role.owner and not access.user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only the team's owners can manage its members")


def _members(session, team_id: int) -> list[MemberOut]:
    rows = session.execute(
        select(User.id, User.email, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == team_id)
        .order_by(User.email)
    )
    return [MemberOut(user_id=user_id, email=email, role=role) for user_id, email, role in rows]


@router.get("/teams", response_model=list[TeamRoleOut])
def list_teams(access: AccessDep, session: SessionDep) -> list[TeamRoleOut]:
    teams = session.scalars(select(Team).where(Team.id.in_(access.team_ids)).order_by(Team.name))
    return [TeamRoleOut(id=t.id, name=t.name, role=access.roles[t.id]) for t in teams]


@router.post("/teams", response_model=TeamRoleOut, status_code=status.HTTP_201_CREATED)
def create_team(body: TeamIn, admin: AdminUser, session: SessionDep) -> TeamRoleOut:
    team = accounts.create_team(session, name=body.name)
    session.add(Membership(user_id=admin.id, team_id=team.id, role=Role.owner))
    return TeamRoleOut(id=team.id, name=team.name, role=Role.owner)


@router.get("/teams/{team_id}/members", response_model=list[MemberOut])
def list_members(team_id: int, access: AccessDep, session: SessionDep) -> list[MemberOut]:
    return _members(session, _team(session, access, team_id).id)


@router.put("/teams/{team_id}/members", response_model=list[MemberOut])
def set_member(team_id: int, body: MemberIn, access: AccessDep, session: SessionDep) -> list[MemberOut]:
    team = _team(session, access, team_id)
    _require_owner(access, team.id)
    accounts.set_membership(session, team=team, email=body.email, role=body.role)
    return _members(session, team.id)


@router.delete("/teams/{team_id}/members/{user_id}", response_model=list[MemberOut])
def remove_member(team_id: int, user_id: int, access: AccessDep, session: SessionDep) -> list[MemberOut]:
    team = _team(session, access, team_id)
    _require_owner(access, team.id)
    accounts.remove_membership(session, team=team, user_id=user_id)
    return _members(session, team.id)


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def create_user(body: UserIn, admin: AdminUser, session: SessionDep) -> User:
    return accounts.create_user(
        session, email=body.email, password=body.password, team_name=body.team, role=body.role, is_admin=body.is_admin
    )
