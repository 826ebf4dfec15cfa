"""API tokens: created (shown once), looked up by their hash, revoked."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.accounts.credentials import hash_api_token, new_api_token, token_display_prefix
from app.core.database import session_scope
from app.core.errors import AccountError
from app.core.tables import ApiToken, Membership, Team, User, utcnow


def create_api_token(
    session: Session, *, user: User, name: str = "default", expires_in_days: int | None = None, team: Team | None = None
) -> tuple[ApiToken, str]:
    """A new token row and the token itself, which is not stored and cannot be shown again.
    With `team` (one of the user's), the token works in that team only."""
    name = name.strip() or "default"
    if len(name) > 100:
        raise AccountError("token names are at most 100 characters", 422)
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise AccountError("expires_in_days must be between 1 and 3650", 422)
    if team is not None and not session.scalar(
        select(Membership.id).where(Membership.user_id == user.id, Membership.team_id == team.id)
    ):
        raise AccountError(f"{user.email} is not a member of team {team.name!r}", 404)
    token = new_api_token()
    row = ApiToken(
        user_id=user.id,
        name=name,
        prefix=token_display_prefix(token),
        token_hash=hash_api_token(token),
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
        team_id=team.id if team is not None else None,
    )
    session.add(row)
    session.flush()
    return row, token


def live_token(session: Session, token: str, *, now: datetime | None = None) -> ApiToken | None:
    """The token's row if it is live (not revoked, not expired) and its user active; else None."""
    now = now or utcnow()
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_api_token(token)))
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row if row.user.is_active else None


USE_RECORDED_EVERY = timedelta(minutes=1)


def record_use(row: ApiToken, *, now: datetime | None = None) -> None:
    """Note that the token was used, at most once a minute and in a transaction of its own:
    the request that used it (a long upload, say) never holds a lock on the token's row."""
    now = now or utcnow()
    if row.last_used_at is not None and now - row.last_used_at <= USE_RECORDED_EVERY:
        return
    due = or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - USE_RECORDED_EVERY)
    with session_scope() as session:
        session.execute(update(ApiToken).where(ApiToken.id == row.id, due).values(last_used_at=now))


def revoke_api_token(session: Session, *, user: User, token_id: int) -> ApiToken:
    row = session.scalar(select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id))
    if row is None:
        raise AccountError("token not found", 404)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def tokens_of(session: Session, user: User) -> list[ApiToken]:
    """The user's tokens, newest first (revoked and expired ones included)."""
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())))
