"""Teams, their members and invitations (owners manage them); creating users (administrators only)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app.accounts import invitations, teams, users
from app.api.bodies import (
    InvitationCreatedOut,
    InvitationIn,
    InvitationOut,
    MemberIn,
    MemberOut,
    TeamIn,
    TeamRoleOut,
    UserIn,
    UserOut,
)
from app.api.deps import AccessDep, AdminUser, SessionDep
from app.core.tables import Role, User

router = APIRouter(prefix="/api", tags=["teams"])


def _members(session, team_id: int) -> list[MemberOut]:
    return [MemberOut(user_id=uid, email=email, role=role) for uid, email, role in teams.members_of(session, team_id)]


@router.get("/teams", response_model=list[TeamRoleOut])
def list_teams(access: AccessDep, session: SessionDep) -> list[TeamRoleOut]:
    return [
        TeamRoleOut(id=t.id, name=t.name, role=access.memberships[t.id])
        for t in teams.teams_by_id(session, list(access.memberships))
    ]


@router.post("/teams", response_model=TeamRoleOut, status_code=status.HTTP_201_CREATED)
def create_team(body: TeamIn, admin: AdminUser, session: SessionDep) -> TeamRoleOut:
    team = teams.create_team_owned_by(session, name=body.name, owner=admin)
    return TeamRoleOut(id=team.id, name=team.name, role=Role.owner)


@router.get("/teams/{team_id}/members", response_model=list[MemberOut])
def list_members(team_id: int, access: AccessDep, session: SessionDep) -> list[MemberOut]:
    return _members(session, access.team(session, team_id).id)


@router.put("/teams/{team_id}/members", response_model=list[MemberOut])
def set_member(team_id: int, body: MemberIn, access: AccessDep, session: SessionDep) -> list[MemberOut]:
    team = access.team(session, team_id)
    access.require_owner(team.id)
    teams.set_membership(session, team=team, user=users.require_user(session, body.email), role=body.role)
    return _members(session, team.id)


@router.delete("/teams/{team_id}/members/{user_id}", response_model=list[MemberOut])
def remove_member(team_id: int, user_id: int, access: AccessDep, session: SessionDep) -> list[MemberOut]:
    """Owners remove members; anyone may leave (remove themselves), except a team's last owner."""
    team = access.team(session, team_id)
    if user_id != access.user.id:
        access.require_owner(team.id)
    teams.remove_membership(session, team=team, user_id=user_id)
    return _members(session, team.id)


@router.get("/teams/{team_id}/invitations", response_model=list[InvitationOut])
def list_invitations(team_id: int, access: AccessDep, session: SessionDep) -> list:
    """The team's invitations that can still be accepted (owners only)."""
    team = access.team(session, team_id)
    access.require_owner(team.id)
    return invitations.open_invitations(session, team.id)


@router.post("/teams/{team_id}/invitations", response_model=InvitationCreatedOut, status_code=status.HTTP_201_CREATED)
def create_invitation(
    team_id: int, body: InvitationIn, request: Request, access: AccessDep, session: SessionDep
) -> InvitationCreatedOut:
    """Invite an email address to join with a role: the answer's `url` is the link to hand
    over, shown this once. It works once, until it expires or is revoked."""
    team = access.team(session, team_id)
    access.require_owner(team.id)
    invitation, secret = invitations.invite(session, team=team, inviter=access.user, email=body.email, role=body.role)
    url = str(request.url_for("invitation_page", secret=secret))
    return InvitationCreatedOut(**InvitationOut.model_validate(invitation).model_dump(), url=url)


@router.delete("/teams/{team_id}/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_invitation(team_id: int, invitation_id: int, access: AccessDep, session: SessionDep) -> None:
    team = access.team(session, team_id)
    access.require_owner(team.id)
    invitations.revoke(session, team=team, invitation_id=invitation_id)


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def create_user(body: UserIn, admin: AdminUser, session: SessionDep) -> User:
    return users.create_user(
        session, email=body.email, password=body.password, team_name=body.team, role=body.role, is_admin=body.is_admin
    )
