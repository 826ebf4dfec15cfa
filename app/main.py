"""The FastAPI application: `uvicorn app.main:app`, or `tunelab serve`."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from urllib.parse import quote

from app import jobs
from app.accounts import AccountError
from app.api import account, datasets, downloads, health, openai_compat, teams
from app.api import jobs as jobs_api
from app.config import get_settings
from app.deps import NotSignedIn
from app.pages import auth as auth_pages
from app.pages import datasets as dataset_pages
from app.pages import home as home_pages
from app.pages import jobs as job_pages
from app.pages import playground as playground_pages
from app.pages import settings as settings_pages
from app.templating import STATIC_DIR, templates

log = logging.getLogger("tunelab")

_SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
    ),
}


class SecurityHeaders:
    """Adds the headers above to every HTTP response. Plain ASGI rather than
    BaseHTTPMiddleware, which would copy every chunk of a large upload through a queue."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(name.encode(), value.encode()) for name, value in _SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in self.headers if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _reap_orphans_forever(interval_s: float) -> None:
    """Jobs whose worker vanished (no heartbeat) are requeued or failed, even while no
    worker is starting up to notice them."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(jobs.reap_orphans)
        except Exception:  # noqa: BLE001 - try again next round
            log.exception("looking for orphaned jobs failed")


@asynccontextmanager
async def lifespan(_app: FastAPI):
    reaper = asyncio.create_task(_reap_orphans_forever(get_settings().worker_stale_after_s / 3))
    try:
        yield
    finally:
        reaper.cancel()


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(title="tunelab", version="0.1.0", docs_url="/api/docs", openapi_url="/api/openapi.json",
                  lifespan=lifespan)  # fmt: skip

    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret(),
        session_cookie="tunelab_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.cookie_secure,
    )

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(AccountError)
    async def account_error(_request: Request, error: AccountError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        """Pages get a page; the API (and anything asking for JSON) gets JSON."""
        wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(("/api/", "/v1/"))
        if not wants_html:
            return await http_exception_handler(request, error)
        titles = {404: "Not found", 403: "Not allowed", 401: "Please sign in"}
        context = {"status_code": error.status_code, "title": titles.get(error.status_code, "Something went wrong"),
                   "message": error.detail if isinstance(error.detail, str) else "", "user": None}  # fmt: skip
        return templates.TemplateResponse(request, "error.html", context, status_code=error.status_code,
                                          headers=getattr(error, "headers", None))  # fmt: skip

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _error: NotSignedIn) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    routers = (health.router, account.router, teams.router, datasets.router, jobs_api.router, downloads.router,
               openai_compat.router, auth_pages.router, playground_pages.router,
               home_pages.router, job_pages.router, dataset_pages.router, settings_pages.router)  # fmt: skip
    for router in routers:
        app.include_router(router)
    return app


app = create_app()
