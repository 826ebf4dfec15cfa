"""Users, teams, memberships and API tokens: the data functions behind the CLI, the
first-run page and the account API. Keyword-only, no HTTP; they raise `AccountError`
with a message fit to show a user, and change nothing when they do."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import ApiToken, Membership, Role, Team, User, utcnow
from app.security import (
    check_password_strength,
    hash_api_token,
    hash_password,
    new_api_token,
    password_needs_rehash,
    token_display_prefix,
    verify_password,
)

# Deliberately simple: one @, something on each side, a dot in the domain, no spaces.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s]{2,63}$")
_TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._\-]{0,63}$")


class AccountError(ValueError):
    """A request about accounts that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.fullmatch(email):
        raise AccountError(f"{email!r} is not a valid email address", 422)
    return email


def check_team_name(name: str) -> str:
    name = name.strip()
    if not _TEAM_NAME.fullmatch(name):
        raise AccountError(
            "team names are 1-64 characters: letters, digits, spaces, '.', '_' or '-', starting with a letter or digit",
            422,
        )
    return name


def user_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def find_user(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email.strip().lower()))


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


def create_user(
    session: Session,
    *,
    email: str,
    password: str,
    team_name: str,
    role: Role = Role.member,
    is_admin: bool = False,
    create_team_if_missing: bool = False,
) -> User:
    """A new user, member of `team_name` with `role`. The team must exist unless
    `create_team_if_missing`, in which case a new team's first user becomes its owner."""
    email = normalize_email(email)
    if problem := check_password_strength(password):
        raise AccountError(problem, 422)
    if find_user(session, email) is not None:
        raise AccountError(f"a user with email {email} already exists", 409)
    team = find_team(session, team_name)
    if team is None:
        if not create_team_if_missing:
            raise AccountError(f"team {team_name.strip()!r} does not exist", 404)
        team = create_team(session, name=team_name)
        role = Role.owner
    user = User(email=email, password_hash=hash_password(password), is_admin=is_admin)
    session.add(user)
    session.flush()
    session.add(Membership(user_id=user.id, team_id=team.id, role=role))
    session.flush()
    return user


def create_first_admin(session: Session, *, email: str, password: str, team_name: str) -> User:
    """The first-run set-up: only while no user exists at all."""
    if user_count(session) > 0:
        raise AccountError("tunelab is already set up; sign in instead", 409)
    return create_user(
        session, email=email, password=password, team_name=team_name, is_admin=True, create_team_if_missing=True
    )


def authenticate(session: Session, *, email: str, password: str) -> User | None:
    """The user with this email and password, or None (the same answer for either mistake)."""
    user = find_user(session, email)
    # An unknown email still costs one Argon2 verification, so timing does not tell it apart.
    password_ok = verify_password(user.password_hash if user else None, password)
    if user is None or not password_ok or not user.is_active:
        return None
    if password_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


def create_api_token(
    session: Session, *, user: User, name: str = "default", expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """A new token row and the token itself, which is not stored and cannot be shown again."""
    name = name.strip() or "default"
    if len(name) > 100:
        raise AccountError("token names are at most 100 characters", 422)
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise AccountError("expires_in_days must be between 1 and 3650", 422)
    token = new_api_token()
    row = ApiToken(
        user_id=user.id,
        name=name,
        prefix=token_display_prefix(token),
        token_hash=hash_api_token(token),
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(row)
    session.flush()
    return row, token


def user_for_token(session: Session, token: str, *, now: datetime | None = None) -> User | None:
    """The active user owning a live (not revoked, not expired) token, or None."""
    now = now or utcnow()
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_api_token(token)))
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    if not row.user.is_active:
        return None
    # Written at most once a minute per token, so that API calls stay read-only in the common case.
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now
    return row.user


def revoke_api_token(session: Session, *, user: User, token_id: int) -> ApiToken:
    row = session.scalar(select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id))
    if row is None:
        raise AccountError("token not found", 404)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def memberships_of(session: Session, user: User) -> list[Membership]:
    return list(
        session.scalars(
            select(Membership).where(Membership.user_id == user.id).join(Team).order_by(Team.name)
        )
    )


def set_membership(session: Session, *, team: Team, email: str, role: Role) -> Membership:
    """Add an existing user to a team, or change their role there."""
    user = find_user(session, email)
    if user is None:
        raise AccountError(f"no user with email {email.strip().lower()}", 404)
    membership = session.scalar(
        select(Membership).where(Membership.team_id == team.id, Membership.user_id == user.id)
    )
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
    membership = session.scalar(
        select(Membership).where(Membership.team_id == team.id, Membership.user_id == user_id)
    )
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
