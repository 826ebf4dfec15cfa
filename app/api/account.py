"""Signing in and out, who am I, and the caller's API tokens."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from app.accounts import teams, tokens, users
from app.api.bodies import LoginIn, MeOut, TeamRoleOut, TokenCreatedOut, TokenIn, TokenOut
from app.api.deps import AccessDep, CurrentUser, SessionDep, end_browser_session, start_browser_session

router = APIRouter(prefix="/api", tags=["account"])


def _me(session, user, only_team_id: int | None = None) -> MeOut:
    """The user and their teams (only the token's team, for a token bound to one)."""
    memberships = teams.memberships_of(session, user)
    team_roles = [
        TeamRoleOut(id=m.team.id, name=m.team.name, role=m.role)
        for m in memberships
        if only_team_id is None or m.team_id == only_team_id
    ]
    return MeOut(id=user.id, email=user.email, is_admin=user.is_admin, teams=team_roles)


@router.post("/session", response_model=MeOut)
def sign_in(body: LoginIn, request: Request, session: SessionDep) -> MeOut:
    address = request.client.host if request.client else None
    user = users.sign_in(
        session, request.app.state.login_throttle, email=body.email, password=body.password, address=address
    )
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong email or password")
    start_browser_session(request, session, user)
    return _me(session, user)


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
def sign_out(request: Request, user: CurrentUser, session: SessionDep) -> None:
    end_browser_session(request, session)


@router.get("/me", response_model=MeOut)
def me(access: AccessDep, session: SessionDep) -> MeOut:
    return _me(session, access.user, only_team_id=access.bound_team_id)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(user: CurrentUser, session: SessionDep) -> list[TokenOut]:
    return [TokenOut.of(row) for row in tokens.tokens_of(session, user)]


@router.post("/tokens", response_model=TokenCreatedOut, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenIn, access: AccessDep, session: SessionDep) -> TokenCreatedOut:
    """A new API token, shown once. With `team_id`, it is bound to that team (one of yours)."""
    row, token = tokens.create_api_token(
        session,
        user=access.user,
        name=body.name,
        expires_in_days=body.expires_in_days,
        team=access.team_for_token(session, body.team_id),
    )
    return TokenCreatedOut(**TokenOut.of(row).model_dump(), token=token)


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: int, user: CurrentUser, session: SessionDep) -> TokenOut:
    return TokenOut.of(tokens.revoke_api_token(session, user=user, token_id=token_id))
