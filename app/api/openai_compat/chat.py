"""/v1/chat/completions: a base or fine-tuned model answers, on an inference worker.

The request is stored and its id enqueued on the inference queue; the worker writes the
answer into the row as it is generated (`app.chat.completions`). This route waits until a worker
has taken the request (an error if none does in time), then either streams the answer as
OpenAI does (server-sent `chat.completion.chunk` events, then `data: [DONE]`) or waits for
the whole of it. A client that goes away mid-stream cancels the request, and the worker stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Literal

import anyio
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.api.deps import AccessDep, SessionDep
from app.chat import completions
from app.chat.completions import Progress
from app.contract.spec import Sampling
from app.core.database import session_scope
from app.core.tables import CompletionState

from .common import public_id
from .errors import OpenAIError, OpenAIRoute, error_body, invalid

router = APIRouter(route_class=OpenAIRoute)

COMPLETION = "chatcmpl"


class TextPart(BaseModel):
    type: str
    text: str | None = None


class MessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionIn(BaseModel):
    """OpenAI's request. Fields tunelab has no use for (`user`, penalties, ...) are ignored;
    those that would change the answer in a way it cannot honour are refused."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[MessageIn] = Field(min_length=1)
    # Sampling: checked by app.contract.spec.Sampling, which the worker receives.
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    logprobs: bool | None = None
    # tunelab's own (OpenAI's client sends it with `extra_body`): leave out the oldest turns of a
    # conversation longer than the model reads, instead of refusing it; `usage.dropped_messages`
    # then says how many went.
    fit_context: bool = False

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value):
        if value not in (None, 1):
            raise ValueError("tunelab answers with one choice (n=1)")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value):
        if value:
            raise ValueError("tunelab's chat does not call tools")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        if value:
            raise ValueError("tunelab's chat does not return log probabilities")
        return value


def _text(message: MessageIn, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    if any(part.type != "text" for part in message.content):
        raise OpenAIError(400, "only text content is supported", param=f"messages.{index}.content")
    return "".join(part.text or "" for part in message.content)


def worker_request(body: ChatCompletionIn) -> dict[str, Any]:
    """The messages and the sampling settings (`app.contract.spec.Sampling`), as the worker takes them."""
    messages = [
        {"role": "system" if message.role == "developer" else message.role, "content": _text(message, i)}
        for i, message in enumerate(body.messages)
    ]
    given = {
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
    }
    try:
        sampling = Sampling.model_validate({key: value for key, value in given.items() if value is not None})
    except ValidationError as error:
        raise invalid(error.errors()) from None
    return {"messages": messages, "sampling": sampling.model_dump(mode="json"), "fit_context": body.fit_context}


def _failure(progress: Progress) -> OpenAIError:
    if not progress.started:
        return OpenAIError(503, progress.error or "the request was not answered", code="no_inference_worker")
    return OpenAIError(500, progress.error or "the answer was cancelled", code="generation_failed")


def _usage(progress: Progress) -> dict[str, int]:
    prompt, completion = progress.prompt_tokens or 0, progress.completion_tokens or 0
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if progress.dropped_messages is not None:
        usage["dropped_messages"] = progress.dropped_messages
    return usage


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _cancel(completion_id: int) -> None:
    with session_scope() as session:
        completions.cancel(session, completion_id)


async def _chunks(
    completion_id: int, model: str, include_usage: bool, first: Progress, updates: AsyncIterator[Progress]
) -> AsyncIterator[str]:
    head = {
        "id": public_id(COMPLETION, completion_id),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return _sse(
            {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        )

    progress, sent, finished = first, 0, False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            if len(progress.text) > sent:
                yield chunk({"content": progress.text[sent:]})
                sent = len(progress.text)
            if progress.state.is_terminal:
                break
            progress = await anext(updates)
        finished = True
        if progress.state != CompletionState.succeeded:
            failure = _failure(progress)
            yield _sse(error_body(failure.status_code, failure.detail, code=failure.code))
            return
        yield chunk({}, progress.finish_reason)
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(progress)})
        yield "data: [DONE]\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            await updates.aclose()
            if not finished:  # the client went away
                await run_in_threadpool(_cancel, completion_id)


@router.post("/chat/completions")
async def create_chat_completion(body: ChatCompletionIn, access: AccessDep, session: SessionDep):
    request = worker_request(body)
    completion_id = await run_in_threadpool(
        partial(completions.start_completion, session, access, model=body.model, request=request)
    )
    updates = completions.follow(completion_id)
    try:
        async for progress in updates:
            if progress.state != CompletionState.queued:
                break
        if progress.state in (CompletionState.failed, CompletionState.cancelled):
            raise _failure(progress)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _chunks(completion_id, body.model, include_usage, progress, updates),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        async for progress in updates:
            pass
    except BaseException:
        await updates.aclose()
        raise
    if progress.state != CompletionState.succeeded:
        raise _failure(progress)
    return {
        "id": public_id(COMPLETION, completion_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": None,
        "usage": _usage(progress),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": progress.text, "refusal": None},
                "finish_reason": progress.finish_reason,
                "logprobs": None,
            }
        ],
    }
