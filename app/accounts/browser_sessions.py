"""Signed-in browsers, kept server-side: the signed cookie carries a random session id, and a
request signs in only while that session's row is live. Signing out revokes the row, so a
copy of the cookie taken before stops working too."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.accounts.credentials import hash_api_token
from app.core.tables import BrowserSession, User, utcnow


def start(session: Session, user: User, *, max_age_s: int) -> str:
    """A new session for the user; the id to put in the cookie (not stored as it is)."""
    session_id = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=max_age_s)
    session.add(BrowserSession(user_id=user.id, id_hash=hash_api_token(session_id), expires_at=expires))
    session.flush()
    return session_id


def user_of(session: Session, session_id: str) -> User | None:
    """The active user of a live (not revoked, not expired) session, or None."""
    row = session.scalar(select(BrowserSession).where(BrowserSession.id_hash == hash_api_token(session_id)))
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        return None
    user = session.get(User, row.user_id)
    return user if user is not None and user.is_active else None


def end(session: Session, session_id: str) -> None:
    session.execute(
        update(BrowserSession)
        .where(BrowserSession.id_hash == hash_api_token(session_id), BrowserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def end_all_of(session: Session, user_id: int) -> None:
    """Sign the user out everywhere (their password changed, an administrator said so)."""
    session.execute(
        update(BrowserSession)
        .where(BrowserSession.user_id == user_id, BrowserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
