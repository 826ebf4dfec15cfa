"""The FastAPI application: `uvicorn app.main:app`, or `tunelab serve`."""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from app.accounts.throttle import LoginThrottle
from app.api import (
    account,
    classifications,
    comparisons,
    datasets,
    downloads,
    evaluations,
    health,
    jobs,
    openai_compat,
    streams,
    sweeps,
    teams,
    webhooks,
    workers,
)
from app.api.errors import install_error_handlers
from app.config import get_settings
from app.jobs.recovery import reap_orphans, resend_lost_messages
from app.pages import api_docs, auth, dashboard, playground
from app.pages import datasets as dataset_pages
from app.pages import jobs as job_pages
from app.pages import settings as settings_pages
from app.pages import sweeps as sweep_pages
from app.pages import workers as worker_pages
from app.pages.templating import STATIC_DIR
from app.sweeps.scheduling import advance_running_sweeps
from app.webhooks.events import forget_old_deliveries
from app.webhooks.events import resend_overdue as resend_overdue_deliveries

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
    worker is starting up to notice them; queued jobs whose message the broker lost are
    sent again, and so are webhook deliveries long overdue (old ones leave the delivery log);
    sweeps launch the trials that a place freed without a worker allows."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(reap_orphans)
            await run_in_threadpool(resend_lost_messages)
            await run_in_threadpool(resend_overdue_deliveries)
            await run_in_threadpool(forget_old_deliveries)
            await run_in_threadpool(advance_running_sweeps)
        except Exception:
            log.exception("looking for orphaned jobs failed")


@asynccontextmanager
async def lifespan(_app: FastAPI):
    reaper = asyncio.create_task(_reap_orphans_forever(get_settings().worker_stale_after_s / 3))
    try:
        yield
    finally:
        reaper.cancel()


class HideInvitationSecrets(logging.Filter):
    """The server's access log shows an invitation link's path without its secret (uvicorn's
    records carry the path as their third argument)."""

    SECRET = re.compile(r"(/|%2F)invite(/|%2F)[^&?#\s]+", re.IGNORECASE)  # also in /login?next=...

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], self.SECRET.sub(r"\1invite\2<secret>", args[2]), *args[3:])
        return True


_HIDE_INVITATION_SECRETS = HideInvitationSecrets()


def create_app() -> FastAPI:
    settings = get_settings()
    logging.getLogger("uvicorn.access").addFilter(_HIDE_INVITATION_SECRETS)
    app = FastAPI(
        title="tunelab",
        version="0.1.0",
        docs_url=None,  # app/pages/api_docs.py serves it, with no CDN
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )

    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret(),
        session_cookie="tunelab_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.cookie_secure,
    )

    app.add_middleware(SecurityHeaders)

    app.state.login_throttle = LoginThrottle(
        per_account=settings.login_failures_per_account,
        per_address=settings.login_failures_per_address,
        window_s=settings.login_failure_window_s,
    )
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(api_docs.SWAGGER_ASSETS_URL, StaticFiles(directory=api_docs.SWAGGER_ASSETS_DIR), name="swagger-ui")
    api = (
        health,
        account,
        teams,
        datasets,
        jobs,
        evaluations,
        classifications,
        comparisons,
        sweeps,
        streams,
        downloads,
        openai_compat,
        workers,
        webhooks,
    )
    pages = (auth, api_docs, playground, dashboard, job_pages, dataset_pages, settings_pages, worker_pages, sweep_pages)
    routers = [module.router for module in (*api, *pages)]
    for router in routers:
        app.include_router(router)
    return app


app = create_app()
