"""Chat completions: a request the app stores and an inference worker answers. The data
functions behind the chat API and the worker; no HTTP here.

The worker writes the text into the request's row as it is generated and rings the
completion's doorbell; the app follows the row (`follow`) and streams what is new. The
database is the truth, the doorbell only wakes the stream up, as for jobs.

States (every change is a compare-and-set on the current state, so a worker finishing and
the app giving up on it can race safely)::

    queued ──> running ──> succeeded | failed | cancelled
      └──> failed | cancelled

The app fails a request that no worker takes within `inference_pickup_timeout_s`, and an
answer that stops moving for `inference_stall_timeout_s` (a worker that died); a client
that goes away cancels its request, and the worker stops generating at its next write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import session_scope
from app.live import Doorbell, completion_channel, ring_after_commit
from app.models import Completion, CompletionState, utcnow

Q, R, S, F, X = (CompletionState.queued, CompletionState.running, CompletionState.succeeded, CompletionState.failed,
                 CompletionState.cancelled)  # fmt: skip
UNFINISHED = (Q, R)
# Requests are kept this long after they last changed (their answer has long been delivered,
# or nobody is waiting for it any more), then deleted.
KEEP = timedelta(hours=1)


def create(session: Session, *, team_id: int, user_id: int | None, model: str, base_model: str,
           weights_key: str | None, request: dict[str, Any]) -> Completion:  # fmt: skip
    """A new queued request; the caller commits, then enqueues its id. Old requests are
    deleted on the way."""
    cutoff = utcnow() - KEEP
    session.execute(delete(Completion).where(Completion.created_at < cutoff, Completion.updated_at < cutoff))
    completion = Completion(team_id=team_id, created_by_id=user_id, model=model, base_model=base_model,
                            weights_key=weights_key, request=request)  # fmt: skip
    session.add(completion)
    session.flush()
    return completion


def _move(session: Session, completion_id: int, from_states: tuple[CompletionState, ...], **values: Any) -> bool:
    """Set `values` if the request is in one of `from_states`; True when it was."""
    now = utcnow()
    values = {"updated_at": now, **values}
    if values.get("state") in (S, F, X):
        values["finished_at"] = now
    changed = session.execute(
        update(Completion).where(Completion.id == completion_id, Completion.state.in_(from_states)).values(**values)
    ).rowcount
    if changed == 1:
        ring_after_commit(session, completion_channel(completion_id))
    return changed == 1


@dataclass(frozen=True)
class Claimed:
    """What a worker needs to answer a request."""

    id: int
    base_model: str
    weights_key: str | None
    request: dict[str, Any]


def claim(session: Session, completion_id: int, worker: str) -> Claimed | None:
    """Mark the request running on this worker, or None when it is not there to answer
    (already answered, given up on, cancelled, or deleted)."""
    if not _move(session, completion_id, (Q,), state=R, worker=worker, started_at=utcnow()):
        return None
    row = session.get(Completion, completion_id)
    return Claimed(row.id, row.base_model, row.weights_key, row.request)


def write_text(session: Session, completion_id: int, text: str) -> bool:
    """The answer so far. False when the request is no longer running: stop generating."""
    return _move(session, completion_id, (R,), text=text)


def finish(session: Session, completion_id: int, *, text: str, finish_reason: str, prompt_tokens: int,
           completion_tokens: int) -> bool:  # fmt: skip
    return _move(session, completion_id, (R,), state=S, text=text, finish_reason=finish_reason,
                 prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)  # fmt: skip


def fail(session: Session, completion_id: int, error: str, *, only_from: tuple[CompletionState, ...] = UNFINISHED) -> bool:
    return _move(session, completion_id, only_from, state=F, error=error)


def cancel(session: Session, completion_id: int) -> bool:
    return _move(session, completion_id, UNFINISHED, state=X)


@dataclass(frozen=True)
class Progress:
    """The request as a follower sees it: the whole answer so far (it only ever grows)."""

    state: CompletionState
    started: bool  # a worker took it
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error: str | None


def _deadline_error(row: Completion) -> str | None:
    settings = get_settings()
    waited = utcnow() - (row.created_at if row.state == Q else row.updated_at)
    if row.state == Q and waited > timedelta(seconds=settings.inference_pickup_timeout_s):
        return (f"No inference worker took the request within {settings.inference_pickup_timeout_s:g} s: they are all "
                f"busy or none is running (start one with `tunelab worker --queues {settings.inference_queue}`).")
    if row.state == R and waited > timedelta(seconds=settings.inference_stall_timeout_s):
        return f"The inference worker stopped answering (nothing new for {settings.inference_stall_timeout_s:g} s)."
    return None


def read_progress(completion_id: int) -> Progress:
    """The request's progress; a request past its deadline is failed first."""
    with session_scope() as session:
        row = session.get(Completion, completion_id)
        if row is None:
            return Progress(F, False, "", None, None, None, "The request was deleted before it was answered.")
        if (error := _deadline_error(row)) and fail(session, completion_id, error, only_from=(row.state,)):
            session.commit()
            session.refresh(row)
        return Progress(row.state, row.started_at is not None, row.text, row.finish_reason, row.prompt_tokens,
                        row.completion_tokens, row.error)  # fmt: skip


async def follow(completion_id: int) -> AsyncIterator[Progress]:
    """The request's progress each time it changes, until it has finished (the last one
    yielded is finished: succeeded, failed or cancelled)."""
    last = None
    async with Doorbell(completion_channel(completion_id)) as bell:
        while True:
            progress = await run_in_threadpool(read_progress, completion_id)
            if progress != last:
                last = progress
                yield progress
            if progress.state.is_terminal:
                return
            await bell.wait()
