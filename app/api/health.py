"""GET /healthz: is the database reachable, is the broker reachable, how many workers live."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.core.database import session_scope
from app.core.queue import broker_reachable
from app.core.worker_registry import live_worker_count

router = APIRouter(tags=["health"])


def _database_status() -> tuple[bool, int]:
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
            return True, live_worker_count(session)
    except Exception:  # noqa: BLE001 - any failure means "unreachable" here
        return False, 0


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """200 when the database and the broker answer, 503 otherwise. `workers` counts the
    worker processes that sent a heartbeat recently; zero workers is reported, not fatal:
    jobs wait in the queue until one starts."""
    database_ok, workers = await run_in_threadpool(_database_status)
    broker_ok = await run_in_threadpool(broker_reachable)
    healthy = database_ok and broker_ok
    body = {
        "status": "ok" if healthy else "unavailable",
        "database": "ok" if database_ok else "unreachable",
        "broker": "ok" if broker_ok else "unreachable",
        "workers": workers,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)
