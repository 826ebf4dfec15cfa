"""The first-run page, signing in and out, and accepting an invitation to a team."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Path, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from app.accounts import invitations, users
from app.api.deps import SessionDep, browser_user, end_browser_session, form_csrf_guard, start_browser_session
from app.core.errors import AccountError, TooManyRequests
from app.pages.templating import templates

router = APIRouter(include_in_schema=False, dependencies=[Depends(form_csrf_guard)])


def _safe_next(target: str | None) -> str:
    """Only same-site paths, so the sign-in page cannot be used as an open redirect."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _setup_done(session) -> RedirectResponse | None:
    """Once the administrator exists the first-run page is gone: its address leads to signing
    in (which sends a signed-in user on to the dashboard), never to a bare 404."""
    if users.user_count(session) > 0:
        return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    return None


@router.get("/setup", response_class=HTMLResponse)
def setup_page(request: Request, session: SessionDep):
    if done := _setup_done(session):
        return done
    return templates.TemplateResponse(request, "setup.html", {"form": {}, "error": None})


@router.post("/setup", response_class=HTMLResponse)
def setup_submit(
    request: Request,
    session: SessionDep,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=1024)],
    team: Annotated[str, Form(max_length=64)],
):
    if done := _setup_done(session):
        return done
    try:
        user = users.create_first_admin(session, email=email, password=password, team_name=team)
    except AccountError as error:
        session.rollback()
        return templates.TemplateResponse(
            request,
            "setup.html",
            {"form": {"email": email, "team": team}, "error": error.message},
            status_code=error.status,
        )
    start_browser_session(request, session, user)
    return RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, session: SessionDep, next: str | None = None):
    if users.user_count(session) == 0:
        return RedirectResponse("/setup", status_code=status.HTTP_303_SEE_OTHER)
    if browser_user(request, session) is not None:
        return RedirectResponse(_safe_next(next), status_code=status.HTTP_303_SEE_OTHER)
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "email": "", "error": None})


@router.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    session: SessionDep,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/",
):
    context = {"next": _safe_next(next), "email": email}
    address = request.client.host if request.client else None
    try:
        user = users.sign_in(session, request.app.state.login_throttle, email=email, password=password, address=address)
    except TooManyRequests as refused:
        context["error"] = refused.message[0].upper() + refused.message[1:] + "."
        return templates.TemplateResponse(request, "login.html", context, status_code=429, headers=refused.headers)
    if user is None:
        context["error"] = "Wrong email or password."
        return templates.TemplateResponse(request, "login.html", context, status_code=status.HTTP_401_UNAUTHORIZED)
    start_browser_session(request, session, user)
    return RedirectResponse(_safe_next(next), status_code=status.HTTP_303_SEE_OTHER)


@router.post("/logout")
def logout(request: Request, session: SessionDep):
    end_browser_session(request, session)
    return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)


def _invitation_context(request: Request, session, secret: str) -> dict:
    """What the invitation page shows: the team, the role, and what the visitor does next:
    choose a password (`new`), sign in as the invited address (`sign_in`), or join (`join`)."""
    invitation = invitations.find(session, secret)
    visitor = browser_user(request, session)
    if visitor is not None:
        step = "join" if visitor.email == invitation.email else "other_user"
    else:
        step = "sign_in" if users.find_user(session, invitation.email) is not None else "new"
    return {
        "invitation": invitation,
        "team_name": invitation.team.name,
        "inviter": invitation.invited_by.email if invitation.invited_by else None,
        "visitor": visitor,
        "step": step,
        "next": request.url.path,
        "error": None,
    }


@router.get("/invite/{secret}", response_class=HTMLResponse, name="invitation_page")
def invitation_page(secret: Annotated[str, Path(max_length=100)], request: Request, session: SessionDep):
    try:
        context = _invitation_context(request, session, secret)
    except AccountError as error:
        return templates.TemplateResponse(request, "invite.html", {"error": error.message}, status_code=error.status)
    return templates.TemplateResponse(request, "invite.html", context)


@router.post("/invite/{secret}", response_class=HTMLResponse)
def accept_invitation(
    secret: Annotated[str, Path(max_length=100)],
    request: Request,
    session: SessionDep,
    password: Annotated[str, Form(max_length=1024)] = "",
    password_again: Annotated[str, Form(max_length=1024)] = "",
):
    """Join: a signed-in user of the invited address joins; a visitor without an account gets
    one with the password they chose, signed in."""
    try:
        visitor = browser_user(request, session)
        if visitor is not None:
            invitations.accept_as_user(session, secret=secret, user=visitor)
        else:
            if password != password_again:
                raise AccountError("the two passwords differ", 422)
            visitor = invitations.accept_as_new_user(session, secret=secret, password=password)
            start_browser_session(request, session, visitor)
    except AccountError as refused:
        session.rollback()
        return _invitation_refused(request, session, secret, refused)
    return RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)


def _invitation_refused(request: Request, session, secret: str, refused: AccountError):
    """The invitation page again, with why it did not work."""
    try:
        context = _invitation_context(request, session, secret)
    except AccountError as gone:
        context, refused = {}, gone
    context["error"] = refused.message
    return templates.TemplateResponse(request, "invite.html", context, status_code=refused.status)
