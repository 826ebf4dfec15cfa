"""Server-sent event streams: one job's timeline (the job page) and the teams' jobs (the
dashboard). Each reads what it sends from the database and waits on a doorbell
(`app.core.live`) between reads; the database is the truth, the push only wakes it up."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette.sse import EventSourceResponse

from app.accounts.access import access_for
from app.api.bodies import JobEventOut, JobOut, MetricOut, SamplesOut
from app.api.deps import AccessDep, SessionDep, recheck_caller
from app.config import get_settings
from app.core.database import session_scope
from app.core.live import Doorbell, job_channel, team_channel
from app.core.tables import Job, JobEvent, JobMetric, JobSamples, JobState, utcnow
from app.core.worker_registry import served_queues
from app.jobs.queries import jobs_changed_since
from app.jobs.timeline import items_after
from app.jobs.workers import job_queue_warning, queue_warning

router = APIRouter(prefix="/api", tags=["jobs"])

PAGE = 1000  # items read at once; a full page means more is waiting
_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _stream_item(item: JobEvent | JobMetric | JobSamples) -> dict[str, Any]:
    if isinstance(item, JobMetric):
        payload = MetricOut.model_validate(item, from_attributes=True).model_dump(mode="json")
        return {"id": str(item.seq), "event": "metric", "data": json.dumps(payload)}
    if isinstance(item, JobSamples):
        payload = SamplesOut.model_validate(item).model_dump(mode="json")
        return {"id": str(item.seq), "event": "samples", "data": json.dumps(payload)}
    payload = JobEventOut.model_validate(item).model_dump(mode="json")
    return {"id": str(item.seq), "event": "event", "data": json.dumps(payload)}


_PROGRESS_KEYS = ("state", "step", "total_steps", "epoch", "train_loss", "eval_loss", "trained_tokens", "error")


def _read_job_stream(job_id: int, after_seq: int) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    with session_scope() as session:
        items = items_after(session, job_id, after_seq, limit=PAGE)
        job = session.get(Job, job_id)
        snapshot = JobOut.of(job, warning=job_queue_warning(session, job)).model_dump(mode="json")
        return [_stream_item(item) for item in items], (items[-1].seq if items else after_seq), snapshot


class AccessWatch:
    """Whether the stream's caller may still see what it streams, asked again every
    `stream_access_recheck_s`: a revoked token, a signed-out browser or a removal from the
    team closes the stream (the client's reconnect then hears 401 or 404)."""

    def __init__(self, request: Request, team_ids: list[int]) -> None:
        self.caller = recheck_caller(request)
        self.team_ids = set(team_ids)
        self.interval_s = get_settings().stream_access_recheck_s
        self.checked_at = time.monotonic()

    def _allowed(self) -> bool:
        with session_scope() as session:
            user = self.caller(session)
            return user is not None and bool(self.team_ids & set(access_for(session, user).roles))

    async def still_allowed(self) -> bool:
        if time.monotonic() - self.checked_at < self.interval_s:
            return True
        self.checked_at = time.monotonic()
        return await run_in_threadpool(self._allowed)


_SEQ = re.compile(r"[0-9]{1,18}")


def _resume_point(last_event_id: str | None, after: int | None) -> int:
    """Where a (re)connecting client left off; anything that is not a sequence number, from the start."""
    for value in (last_event_id, after):
        if value is not None and _SEQ.fullmatch(str(value).strip()):
            return int(str(value).strip())
    return 0


@router.get("/jobs/{job_id}/stream")
async def stream_job(
    job_id: int,
    request: Request,
    access: AccessDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, description="Like Last-Event-ID, for clients that cannot set it")] = None,
) -> EventSourceResponse:
    """Server-sent events: every stored metric point (`metric`), event (`event`) and set of
    sample answers at an evaluation (`samples`) after
    Last-Event-ID, each with its sequence number as the event id, then the live ones;
    `progress` snapshots of the job as it moves; `end` when the job has finished."""
    job = await run_in_threadpool(access.get, session, Job, job_id)
    start = _resume_point(last_event_id, after)
    watch = AccessWatch(request, [job.team_id])

    async def events():
        last_seq, last_progress = start, None
        async with Doorbell(job_channel(job.id)) as bell:
            while await watch.still_allowed():
                items, last_seq, snapshot = await run_in_threadpool(_read_job_stream, job.id, last_seq)
                for item in items:
                    yield item
                # Anything the job's facts show: a loss or epoch written after its step is news too.
                progress = tuple(snapshot[key] for key in _PROGRESS_KEYS)
                if progress != last_progress:
                    last_progress = progress
                    yield {"event": "progress", "data": json.dumps(snapshot)}
                if JobState(snapshot["state"]).is_terminal and not items:
                    yield {"event": "end", "data": json.dumps({"state": snapshot["state"]})}
                    return
                if len(items) < PAGE:
                    await bell.wait()

    return EventSourceResponse(events(), ping=15, headers=_HEADERS)


def _read_team_jobs(team_ids: list[int], since) -> list[JobOut]:
    with session_scope() as session:
        jobs = jobs_changed_since(session, team_ids, since)
        served = served_queues(session) if any(job.state == JobState.queued for job in jobs) else Counter()
        return [JobOut.of(job, warning=queue_warning(job, served)) for job in jobs]


# Clocks of app and worker hosts may differ a little: each read looks back this far.
_CLOCK_SLACK = timedelta(seconds=5)


@router.get("/stream")
async def stream_team(request: Request, access: AccessDep) -> EventSourceResponse:
    """Server-sent events for the dashboard: a `snapshot` of the teams' recent jobs, then a
    `job` event with the job's new state each time one changes (state, progress, losses)."""
    team_ids = access.team_ids
    watch = AccessWatch(request, team_ids)

    async def events():
        sent: dict[int, tuple] = {}
        since = None
        async with Doorbell(*(team_channel(team_id) for team_id in team_ids)) as bell:
            while await watch.still_allowed():
                rows = await run_in_threadpool(_read_team_jobs, team_ids, since)
                if since is None:
                    yield {"event": "snapshot", "data": json.dumps([row.model_dump(mode="json") for row in rows])}
                changed = []
                for row in rows:
                    version = (row.state, row.step, row.train_loss, row.eval_loss, row.updated_at)
                    if sent.get(row.id) != version:
                        sent[row.id] = version
                        changed.append(row)
                if since is not None:
                    for row in reversed(changed):
                        yield {"event": "job", "data": row.model_dump_json()}
                newest = max((row.updated_at for row in rows), default=None)
                if newest is not None:
                    since = max(since, newest - _CLOCK_SLACK) if since else newest - _CLOCK_SLACK
                elif since is None:
                    since = utcnow() - _CLOCK_SLACK
                await bell.wait()

    return EventSourceResponse(events(), ping=15, headers=_HEADERS)
