"""The workers: who is live, on which queues and devices, running what; the queues' lengths."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.bodies import WorkersOut
from app.api.deps import AccessDep, SessionDep
from app.jobs.workers import workers_overview

router = APIRouter(prefix="/api", tags=["workers"])


@router.get("/workers", response_model=WorkersOut)
def list_workers(access: AccessDep, session: SessionDep) -> WorkersOut:
    """Every worker seen in the last day (the silent ones marked `stale`), with its devices and
    the job it runs (named only when it is one of your teams'); the queues and their lengths."""
    return WorkersOut.of(workers_overview(session, access))
