"""Invitations to join a team: an owner invites an email address with a role and gets a link
to hand over (no mail server needed); whoever opens it sets a password (a new user) or signs
in (an existing one) and joins. Only a hash of the link's secret is stored; a link works once,
until it expires (`invitation_max_age_s`) or an owner revokes it.

Keyword-only, no HTTP; they raise `AccountError` with a message fit to show a user."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.accounts.credentials import check_password_strength, hash_api_token, hash_password
from app.accounts.users import find_user, normalize_email
from app.config import get_settings
from app.core.errors import AccountError
from app.core.tables import Invitation, Membership, Role, Team, User, utcnow


def _open(query):
    now = utcnow()
    return query.where(Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None), Invitation.expires_at > now)


def invite(session: Session, *, team: Team, inviter: User, email: str, role: Role) -> tuple[Invitation, str]:
    """A new invitation and its secret (for the link), which is not stored and cannot be shown
    again. An earlier open invitation of the same address to the team is revoked: the newest
    link is the one that works."""
    email = normalize_email(email)
    member = session.scalar(
        select(Membership.id)
        .join(User, User.id == Membership.user_id)
        .where(Membership.team_id == team.id, User.email == email)
    )
    if member is not None:
        raise AccountError(f"{email} is already a member of {team.name}", 409)
    now = utcnow()
    session.execute(
        _open(update(Invitation))
        .where(Invitation.team_id == team.id, Invitation.email == email)
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    settings = get_settings()
    pending = session.scalar(_open(select(func.count()).select_from(Invitation)).where(Invitation.team_id == team.id))
    if (pending or 0) >= settings.max_pending_invitations:
        raise AccountError(f"{team.name} has {pending} open invitations already: revoke some first", 409)
    secret = secrets.token_urlsafe(32)
    invitation = Invitation(
        team_id=team.id,
        email=email,
        role=role,
        secret_hash=hash_api_token(secret),
        invited_by_id=inviter.id,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.invitation_max_age_s),
    )
    session.add(invitation)
    session.flush()
    return invitation, secret


def open_invitations(session: Session, team_id: int) -> list[Invitation]:
    """The team's invitations that can still be accepted, newest first."""
    query = _open(select(Invitation)).where(Invitation.team_id == team_id).order_by(Invitation.id.desc())
    return list(session.scalars(query))


def revoke(session: Session, *, team: Team, invitation_id: int) -> Invitation:
    invitation = session.scalar(select(Invitation).where(Invitation.id == invitation_id, Invitation.team_id == team.id))
    if invitation is None:
        raise AccountError("invitation not found", 404)
    if invitation.accepted_at is not None:
        raise AccountError(f"{invitation.email} has accepted this invitation already", 409)
    if invitation.revoked_at is None:
        invitation.revoked_at = utcnow()
    session.flush()
    return invitation


def find(session: Session, secret: str) -> Invitation:
    """The invitation a link carries, if it can still be accepted; else why not (404, 410)."""
    invitation = session.scalar(select(Invitation).where(Invitation.secret_hash == hash_api_token(secret)))
    if invitation is None:
        raise AccountError("this invitation link is not valid: ask the team's owner for a new one", 404)
    if invitation.accepted_at is not None:
        raise AccountError("this invitation has been used already: sign in instead", 410)
    if invitation.revoked_at is not None:
        raise AccountError("this invitation was withdrawn: ask the team's owner for a new one", 410)
    if invitation.expires_at <= utcnow():
        raise AccountError("this invitation has expired: ask the team's owner for a new one", 410)
    return invitation


def _claim(session: Session, invitation: Invitation) -> None:
    """Use the invitation up, exactly once even when two requests race for it: the loser
    waits on the row's lock, then finds it used. Done first, before anything is created."""
    claimed = session.execute(
        _open(update(Invitation))
        .where(Invitation.id == invitation.id)
        .values(accepted_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise AccountError("this invitation has been used already: sign in instead", 410)


def accept_as_new_user(session: Session, *, secret: str, password: str) -> User:
    """A new account for the invited address, with the password it chose, in the team."""
    invitation = find(session, secret)
    if find_user(session, invitation.email) is not None:
        raise AccountError(f"{invitation.email} has an account already: sign in to accept the invitation", 409)
    if problem := check_password_strength(password):
        raise AccountError(problem, 422)
    _claim(session, invitation)
    user = User(email=invitation.email, password_hash=hash_password(password), current_team_id=invitation.team_id)
    session.add(user)
    session.flush()
    session.add(Membership(user_id=user.id, team_id=invitation.team_id, role=invitation.role))
    session.execute(update(Invitation).where(Invitation.id == invitation.id).values(accepted_by_id=user.id))
    session.flush()
    return user


def accept_as_user(session: Session, *, secret: str, user: User) -> Team:
    """The signed-in user joins the team (the invitation must be for their address); the team
    becomes the one they work in."""
    invitation = find(session, secret)
    if invitation.email != user.email:
        raise AccountError(
            f"this invitation is for {invitation.email}, and you are signed in as {user.email}: "
            f"sign out, then open the link again",
            403,
        )
    _claim(session, invitation)
    session.execute(update(Invitation).where(Invitation.id == invitation.id).values(accepted_by_id=user.id))
    membership = session.scalar(
        select(Membership).where(Membership.team_id == invitation.team_id, Membership.user_id == user.id)
    )
    if membership is None:
        session.add(Membership(user_id=user.id, team_id=invitation.team_id, role=invitation.role))
    user.current_team_id = invitation.team_id
    session.flush()
    return invitation.team
