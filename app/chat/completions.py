"""Chat completions: a request the app stores and an inference worker answers. The data
functions behind the chat API and the worker; no HTTP here.

A request is of one of three kinds, through the same queue and states: a chat
(`{"messages", "sampling", "fit_context"}`, answered with text), the labelling of a text by
a classifier job's model (`{"kind": "classify", "text"}`, answered with `probabilities`), or a
prediction of a tagger, question answerer or encoder-decoder job's model (`{"kind": "predict",
"text"}` or `{"kind": "predict", "question", "context"}`, answered with its result as JSON text).

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

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from anyio import to_thread
from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.chat.model_names import ModelNotFound, finished_job_model, is_classifier, job_task, resolve
from app.config import get_settings
from app.core.database import session_scope
from app.core.errors import Conflict, DomainError, NotFound, Unavailable
from app.core.live import Doorbell, completion_channel, ring_after_commit
from app.core.queue import commit_then_enqueue, enqueue_completion
from app.core.state_machine import StateMachine
from app.core.tables import Completion, CompletionState, Job, Team, utcnow
from app.core.worker_registry import serves_queue
from app.jobs.artifacts import final_weights

_QUEUED, _RUNNING = CompletionState.queued, CompletionState.running
_SUCCEEDED, _FAILED, _CANCELLED = CompletionState.succeeded, CompletionState.failed, CompletionState.cancelled
UNFINISHED = (_QUEUED, _RUNNING)
COMPLETION_STATES = StateMachine(
    Completion,
    {
        _QUEUED: frozenset({_RUNNING, _FAILED, _CANCELLED}),
        _RUNNING: frozenset({_SUCCEEDED, _FAILED, _CANCELLED}),
        _SUCCEEDED: frozenset(),
        _FAILED: frozenset(),
        _CANCELLED: frozenset(),
    },
    what="completion",
)
# Requests are kept this long after they last changed (their answer has long been delivered,
# or nobody is waiting for it any more), then deleted.
KEEP = timedelta(hours=1)
CLASSIFY = "classify"  # the request kind of a text to label; a request without a kind is a chat
PREDICT = "predict"  # the request kind of a tagger's, question answerer's or encoder-decoder's input


def create(
    session: Session,
    *,
    team_id: int,
    user_id: int | None,
    model: str,
    base_model: str,
    weights_key: str | None,
    request: dict[str, Any],
) -> Completion:
    """A new queued request; the caller commits, then enqueues its id. Old requests are
    deleted on the way."""
    cutoff = utcnow() - KEEP
    session.execute(delete(Completion).where(Completion.created_at < cutoff, Completion.updated_at < cutoff))
    completion = Completion(
        team_id=team_id,
        created_by_id=user_id,
        model=model,
        base_model=base_model,
        weights_key=weights_key,
        request=request,
    )
    session.add(completion)
    session.flush()
    return completion


def start_completion(session: Session, access: TeamAccess, *, model: str, request: dict[str, Any]) -> int:
    """Store a chat request for `model` (messages and sampling, as the worker takes them) and
    hand it to the inference workers; its id. NotFound (code model_not_found) for a model the
    caller cannot use, Unavailable when no inference worker runs or the broker is down."""
    try:
        target = resolve(session, access, model)
    except ModelNotFound as error:
        raise NotFound(str(error), code="model_not_found") from None
    return _enqueue(
        session,
        access,
        team_id=target.team_id or access.default_team(),
        model=target.model,
        base_model=target.base_model,
        weights_key=target.weights.blob_key if target.weights else None,
        request=request,
    )


def start_classification(session: Session, access: TeamAccess, job_id: int, text: str) -> int:
    """Have an inference worker label `text` with the classifier job `job_id` trained (its
    final weights, or a stopped job's last checkpoint); the request's id. NotFound for another
    team's job, Conflict for a job that is not a finished classifier, Unavailable as for chat."""
    job = access.get(session, Job, job_id)
    if not is_classifier(session, job):
        raise Conflict("this job's model chats: it was not trained to label text", code="not_a_classifier")
    return _enqueue_for_job(session, access, job, {"kind": CLASSIFY, "text": text}, what="classifier")


def start_prediction(session: Session, access: TeamAccess, job_id: int, inputs: dict[str, str]) -> int:
    """Have an inference worker run the tagger, question answerer or encoder-decoder job `job_id`
    trained on `inputs` ("text", or "question" and "context"); errors as `start_classification`."""
    job = access.get(session, Job, job_id)
    if job_task(session, job) is None:
        raise Conflict(
            "this job's model chats or labels text: it was not trained to tag, answer from a context or write a target",
            code="not_a_task_model",
        )
    return _enqueue_for_job(session, access, job, {"kind": PREDICT, **inputs}, what="model")


def _enqueue_for_job(session: Session, access: TeamAccess, job: Job, request: dict[str, Any], *, what: str) -> int:
    """A request for the model a finished job left (its final weights, or a stopped job's last checkpoint)."""
    if not job.state.is_terminal:
        raise Conflict(f"the job is {job.state.value}: its {what} can be tried once it has finished")
    weights = final_weights(session, job)
    if weights is None:
        raise Conflict(f"the job left no {what} to try: it saved no weights")
    model = finished_job_model(session, job, session.get(Team, job.team_id).name)
    return _enqueue(
        session,
        access,
        team_id=job.team_id,
        model=model,
        base_model=job.base_model,
        weights_key=weights.blob_key,
        request=request,
    )


def _enqueue(
    session: Session,
    access: TeamAccess,
    *,
    team_id: int,
    model: str,
    base_model: str,
    weights_key: str | None,
    request: dict[str, Any],
) -> int:
    """Store the request and hand it to the inference workers; its id."""
    queue = get_settings().inference_queue
    if not serves_queue(session, queue):
        raise Unavailable(
            f"No inference worker is running: start one with `tunelab worker --queues {queue}` "
            "(`tunelab serve` starts one itself).",
            code="no_inference_worker",
        )
    completion = create(
        session,
        team_id=team_id,
        user_id=access.user.id,
        model=model,
        base_model=base_model,
        weights_key=weights_key,
        request=request,
    )
    commit_then_enqueue(
        session,
        lambda: enqueue_completion(completion.id),
        on_failure=lambda: fail(session, completion.id, "The queue (broker) could not be reached."),
        message="the queue (broker) is unreachable; try again when /healthz is ok",
    )
    return completion.id


def _move(session: Session, completion_id: int, to: CompletionState, *, only_from=UNFINISHED, **values: Any) -> bool:
    """Move the request to `to` if it is in one of `only_from`; True when it was."""
    moved = COMPLETION_STATES.move(session, completion_id, from_states=only_from, to=to, **values)
    if moved:
        ring_after_commit(session, completion_channel(completion_id))
    return moved


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
    if not _move(session, completion_id, _RUNNING, only_from=(_QUEUED,), worker=worker, started_at=utcnow()):
        return None
    row = session.get(Completion, completion_id)
    return Claimed(row.id, row.base_model, row.weights_key, row.request)


def write_text(session: Session, completion_id: int, text: str) -> bool:
    """The answer so far. False when the request is no longer running: stop generating."""
    written = COMPLETION_STATES.update_if(session, completion_id, (_RUNNING,), text=text)
    if written:
        ring_after_commit(session, completion_channel(completion_id))
    return written


def finish(
    session: Session,
    completion_id: int,
    *,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    dropped_messages: int | None = None,
) -> bool:
    return _move(
        session,
        completion_id,
        _SUCCEEDED,
        only_from=(_RUNNING,),
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        dropped_messages=dropped_messages,
    )


def finish_classification(
    session: Session, completion_id: int, *, probabilities: dict[str, float], prompt_tokens: int, truncated: bool
) -> bool:
    """A classification's answer: each label's probability, and whether the text was cut to fit."""
    return _move(
        session,
        completion_id,
        _SUCCEEDED,
        only_from=(_RUNNING,),
        probabilities=probabilities,
        finish_reason="length" if truncated else "stop",
        prompt_tokens=prompt_tokens,
        completion_tokens=0,
    )


def finish_prediction(session: Session, completion_id: int, *, result: dict[str, Any]) -> bool:
    """A prediction's answer (entities, an answer span, a generated target), kept as JSON text."""
    return _move(
        session,
        completion_id,
        _SUCCEEDED,
        only_from=(_RUNNING,),
        text=json.dumps(result),
        finish_reason="stop",
        prompt_tokens=0,
        completion_tokens=0,
    )


def fail(
    session: Session, completion_id: int, error: str, *, only_from: tuple[CompletionState, ...] = UNFINISHED
) -> bool:
    return _move(session, completion_id, _FAILED, only_from=only_from, error=error)


def cancel(session: Session, completion_id: int) -> bool:
    return _move(session, completion_id, _CANCELLED)


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
    dropped_messages: int | None = None  # oldest messages left out to fit the context
    probabilities: dict[str, float] | None = None  # a classification's answer


def _deadline_error(row: Completion) -> str | None:
    settings = get_settings()
    waited = utcnow() - (row.created_at if row.state == _QUEUED else row.updated_at)
    if row.state == _QUEUED and waited > timedelta(seconds=settings.inference_pickup_timeout_s):
        return (
            f"No inference worker took the request within {settings.inference_pickup_timeout_s:g} s: they are all "
            f"busy or none is running (start one with `tunelab worker --queues {settings.inference_queue}`)."
        )
    if row.state == _RUNNING and waited > timedelta(seconds=settings.inference_stall_timeout_s):
        return f"The inference worker stopped answering (nothing new for {settings.inference_stall_timeout_s:g} s)."
    return None


def read_progress(completion_id: int) -> Progress:
    """The request's progress; a request past its deadline is failed first."""
    with session_scope() as session:
        row = session.get(Completion, completion_id)
        if row is None:
            return Progress(_FAILED, False, "", None, None, None, "The request was deleted before it was answered.")
        if (error := _deadline_error(row)) and fail(session, completion_id, error, only_from=(row.state,)):
            session.commit()
            session.refresh(row)
        return Progress(
            row.state,
            row.started_at is not None,
            row.text,
            row.finish_reason,
            row.prompt_tokens,
            row.completion_tokens,
            row.error,
            row.dropped_messages,
            row.probabilities,
        )


async def follow(completion_id: int) -> AsyncIterator[Progress]:
    """The request's progress each time it changes, until it has finished (the last one
    yielded is finished: succeeded, failed or cancelled)."""
    last = None
    async with Doorbell(completion_channel(completion_id)) as bell:
        while True:
            progress = await to_thread.run_sync(read_progress, completion_id)
            if progress != last:
                last = progress
                yield progress
            if progress.state.is_terminal:
                return
            await bell.wait()


@dataclass(frozen=True)
class Classification:
    labels: list[tuple[str, float]]  # (label, probability), most probable first
    tokens: int  # the text's length in tokens, as the classifier read it
    truncated: bool  # the text was longer than the model reads: only its start was labelled


async def classify(session: Session, access: TeamAccess, job_id: int, text: str) -> Classification:
    """The label probabilities the classifier of job `job_id` gives `text`, once an inference
    worker has answered (see `start_classification` for the errors; Unavailable when no worker
    takes it in time, DomainError 500 when it fails)."""
    completion_id = await to_thread.run_sync(start_classification, session, access, job_id, text)
    progress = await _answered(completion_id, "classification")
    if progress.probabilities is None:
        raise DomainError("the classification came back without labels", 500, code="classification_failed")
    labels = sorted(progress.probabilities.items(), key=lambda item: item[1], reverse=True)
    return Classification(labels, progress.prompt_tokens or 0, progress.finish_reason == "length")


async def _answered(completion_id: int, what: str) -> Progress:
    """The request once finished; Unavailable when no worker took it, DomainError 500 when it failed."""
    updates = follow(completion_id)
    try:
        async for progress in updates:
            pass
    finally:
        await updates.aclose()
    if progress.state != _SUCCEEDED:
        if not progress.started:
            raise Unavailable(progress.error or "the request was not answered", code="no_inference_worker")
        raise DomainError(progress.error or f"the {what} was cancelled", 500, code=f"{what}_failed")
    return progress


async def predict(session: Session, access: TeamAccess, job_id: int, inputs: dict[str, str]) -> dict[str, Any]:
    """What the tagger, question answerer or encoder-decoder of job `job_id` makes of `inputs`, once
    an inference worker has answered (errors as `classify`)."""
    completion_id = await to_thread.run_sync(start_prediction, session, access, job_id, inputs)
    return json.loads((await _answered(completion_id, "prediction")).text)
