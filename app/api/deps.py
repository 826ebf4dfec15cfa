"""Request dependencies: the database session, the signed-in user, and their team access.

Routes read like plain functions::

    @router.get("/api/jobs/{job_id}")
    def get_job(job_id: int, session: SessionDep, access: AccessDep) -> JobOut:
        return JobOut.of(access.get(session, Job, job_id))   # 404 for a missing job and another team's alike

Authentication is either `Authorization: Bearer <API token>` or the signed session
cookie of the browser. Cookie-authenticated requests that change something must carry
the session's CSRF token (header `X-CSRF-Token`, or form field `csrf_token`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from app.accounts import browser_sessions
from app.accounts.access import TeamAccess, access_for, browser_access
from app.accounts.credentials import csrf_matches, new_csrf_token
from app.accounts.tokens import live_token, record_use
from app.config import get_settings
from app.core.database import get_db
from app.core.tables import User

# "function" scope: the session commits before the response is sent, so a client that gets
# 201 can read what it created at once. Streaming responses open sessions of their own.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_ID = "sid"  # the browser session's id; its row says whether it is still live
SESSION_CSRF = "csrf"
# The team a page works in, which its API calls carry (a header; a query parameter for streams,
# which EventSource opens without headers): a tab keeps its team when another tab switches.
TEAM_HEADER = "x-tunelab-team"
TEAM_QUERY = "team"


class NotSignedIn(Exception):
    """Raised by page dependencies; the app answers with a redirect to the sign-in page."""


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


def streamed_body(request: Request) -> dict:
    """A request's body as the domain reads an upload: chunk by chunk, with its headers."""
    return {
        "chunks": request.stream(),
        "content_type": request.headers.get("content-type"),
        "content_length": request.headers.get("content-length"),
    }


def start_browser_session(request: Request, session: Session, user: User) -> None:
    """Sign a browser in: a fresh session (no fixation), with a new CSRF token."""
    request.session.clear()
    request.session[SESSION_ID] = browser_sessions.start(session, user, max_age_s=get_settings().session_max_age_s)
    csrf_token(request)


def end_browser_session(request: Request, session: Session) -> None:
    """Sign a browser out, for good: the session's row is revoked, so no copy of the cookie works."""
    session_id = request.session.get(SESSION_ID)
    if isinstance(session_id, str):
        browser_sessions.end(session, session_id)
    request.session.clear()


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use (for forms and the page's JS)."""
    token = request.session.get(SESSION_CSRF)
    if not token:
        token = request.session[SESSION_CSRF] = new_csrf_token()
    return token


async def _require_csrf_token(request: Request) -> None:
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        given = (await request.form()).get("csrf_token")
    if not csrf_matches(request.session.get(SESSION_CSRF), given if isinstance(given, str) else None):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token; reload the page and try again")


async def csrf_guard(request: Request) -> None:
    """Cookie-authenticated requests that change something must echo the session's CSRF
    token. Requests with an Authorization header carry no ambient credential and skip it."""
    if request.method in SAFE_METHODS or "authorization" in request.headers:
        return
    if not request.session:
        return  # no cookie session, so no ambient credential to abuse: authentication answers 401
    await _require_csrf_token(request)


async def form_csrf_guard(request: Request) -> None:
    """For the sign-in and first-run forms, which have no session to protect yet but must
    not be submitted from another site (login CSRF): the token is always required."""
    if request.method not in SAFE_METHODS:
        await _require_csrf_token(request)


def _authenticate(request: Request, session: Session) -> User | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _unauthorized("the Authorization header must be 'Bearer <API token>'")
        token = live_token(session, credentials.strip())
        if token is None:
            raise _unauthorized("invalid, expired or revoked API token")
        record_use(token)
        request.state.token_team_id = token.team_id
        return token.user
    return browser_user(request, session)


def browser_user(request: Request, session: Session) -> User | None:
    """The user the browser's live session signs in, or None (and the stale cookie is dropped)."""
    session_id = request.session.get(SESSION_ID)
    if not isinstance(session_id, str):
        return None
    user = browser_sessions.user_of(session, session_id)
    if user is None:
        request.session.clear()
    return user


def current_user(request: Request, session: SessionDep, _csrf: Annotated[None, Depends(csrf_guard)]) -> User:
    user = _authenticate(request, session)
    if user is None:
        raise _unauthorized("sign in or send an API token")
    return user


def page_user(request: Request, session: SessionDep, _csrf: Annotated[None, Depends(csrf_guard)]) -> User:
    """For HTML pages: like `current_user`, but sends the browser to the sign-in page."""
    user = _authenticate(request, session)
    if user is None:
        raise NotSignedIn()
    return user


CurrentUser = Annotated[User, Depends(current_user)]
PageUser = Annotated[User, Depends(page_user)]


def recheck_caller(request: Request) -> Callable[[Session], User | None]:
    """For a long response (a live stream): a function that signs the request's caller in
    again, from its credentials as they are now; None once the token is revoked, the
    browser signed out, or the user deactivated."""
    authorization = request.headers.get("authorization")
    session_id = request.session.get(SESSION_ID)

    def caller(session: Session) -> User | None:
        if authorization is not None:
            token = live_token(session, authorization.partition(" ")[2].strip())
            return token.user if token is not None else None
        return browser_sessions.user_of(session, session_id) if isinstance(session_id, str) else None

    return caller


def _asked_team(request: Request) -> int | None:
    value = request.headers.get(TEAM_HEADER) or request.query_params.get(TEAM_QUERY) or ""
    return int(value) if value.isdigit() and len(value) < 19 else None


def _access_for(request: Request, user: User, session: Session, *, page: bool = False) -> TeamAccess:
    """A browser's API call works in its page's team (else the user's current team), a page in
    the current team; a token bound to a team works in that team; an unbound token in all of
    its user's teams."""
    if "authorization" in request.headers:
        return access_for(session, user, bound_team_id=getattr(request.state, "token_team_id", None))
    return browser_access(session, user, asked_team_id=None if page else _asked_team(request))


def team_access(request: Request, user: CurrentUser, session: SessionDep) -> TeamAccess:
    return _access_for(request, user, session)


def page_access(request: Request, user: PageUser, session: SessionDep) -> TeamAccess:
    return _access_for(request, user, session, page=True)


AccessDep = Annotated[TeamAccess, Depends(team_access)]
PageAccessDep = Annotated[TeamAccess, Depends(page_access)]


def require_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only administrators can do this")
    return user


AdminUser = Annotated[User, Depends(require_admin)]
