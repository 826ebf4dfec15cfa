"""Users: creating them (from the CLI, the first-run page and the admin API), and signing in.
Keyword-only, no HTTP; they raise `AccountError` with a message fit to show a user, and
change nothing when they do."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.accounts.credentials import check_password_strength, hash_password, password_needs_rehash, verify_password
from app.accounts.teams import create_team, find_team
from app.accounts.throttle import LoginThrottle
from app.core.errors import AccountError
from app.core.tables import Membership, Role, User

# Deliberately simple: one @, something on each side, a dot in the domain, no spaces.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s]{2,63}$")


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.fullmatch(email):
        raise AccountError(f"{email!r} is not a valid email address", 422)
    return email


def user_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def find_user(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email.strip().lower()))


def require_user(session: Session, email: str) -> User:
    """The user with this email, or AccountError (404)."""
    user = find_user(session, email)
    if user is None:
        raise AccountError(f"no user with email {email.strip().lower()}", 404)
    return user


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


def sign_in(
    session: Session, throttle: LoginThrottle, *, email: str, password: str, address: str | None
) -> User | None:
    """`authenticate`, refused with TooManyRequests after too many failures for the account or
    the client's address (see `app.accounts.throttle`)."""
    throttle.check(email, address)
    user = authenticate(session, email=email, password=password)
    if user is None:
        throttle.failed(email, address)
    else:
        throttle.succeeded(email)
    return user


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
