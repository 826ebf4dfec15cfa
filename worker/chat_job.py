"""Answering chat requests on an inference worker: claim the request, generate with the
process's cached models, write the text into the request's row as it comes. A request of kind
"classify" is answered with a classifier's label probabilities instead.

The Celery task is a one-line call into `run_completion`. An inference worker keeps its
process (no max-tasks-per-child), so the models it has loaded answer the next request at once.
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial
from pathlib import Path

from app.chat import completions
from app.config import get_settings
from app.contract.spec import Sampling
from app.core.blobs import blob_store
from app.core.database import session_scope
from app.jobs.recovery import worker_identity

log = logging.getLogger(__name__)

_models = None


def model_cache():
    """This process's loaded models (created on first use)."""
    global _models
    if _models is None:
        from worker.ml.inference import ModelCache

        _models = ModelCache(get_settings().models_path)
    return _models


class _TextWriter:
    """Writes the answer so far into the request's row, at most every `interval_s`, and
    says when to stop: the request is no longer running (cancelled, or given up on)."""

    def __init__(self, completion_id: int, interval_s: float = 0.05) -> None:
        self.completion_id = completion_id
        self.interval_s = interval_s
        self.text = ""
        self._written_at = 0.0

    def add(self, piece: str) -> bool:
        self.text += piece
        if time.monotonic() - self._written_at < self.interval_s:
            return True
        self._written_at = time.monotonic()
        with session_scope() as session:
            return completions.write_text(session, self.completion_id, self.text)


def run_completion(completion_id: int) -> None:
    """Answer one chat (or classification) request. Never raises: a failure is written into the request."""
    from worker.ml import TrainingError

    with session_scope() as session:
        claimed = completions.claim(session, completion_id, worker_identity(os.getpid()))
    if claimed is None:
        return
    answer = {completions.CLASSIFY: _classify, completions.PREDICT: _predict}.get(claimed.request.get("kind"), _chat)
    try:
        weights = blob_store().path(claimed.weights_key) if claimed.weights_key else None
        record = answer(claimed, weights)
    except TrainingError as failure:
        record = partial(completions.fail, error=str(failure))
    except Exception as failure:
        log.exception("inference request %s failed", completion_id)
        record = partial(completions.fail, error=f"Inference failed unexpectedly: {type(failure).__name__}: {failure}")
    with session_scope() as session:
        record(session, completion_id)


def _chat(claimed: completions.Claimed, weights: Path | None):
    """The conversation answered, as text written as it comes; returns how to record the end."""
    from worker.ml.inference import generate_chat

    writer = _TextWriter(claimed.id)
    sampling = Sampling.model_validate(claimed.request["sampling"])
    fit = bool(claimed.request.get("fit_context"))
    with model_cache().use(claimed.base_model, weights) as model:
        reply = generate_chat(model, claimed.request["messages"], sampling, on_text=writer.add, fit_context=fit)
    return partial(
        completions.finish,
        text=reply.text,
        finish_reason=reply.finish_reason,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        dropped_messages=reply.dropped_messages if fit else None,
    )


def _classify(claimed: completions.Claimed, weights: Path | None):
    """The text labelled by the classifier; returns how to record the answer."""
    from worker.ml import InferenceError
    from worker.ml.inference import classify

    if weights is None:
        raise InferenceError("a base model has no trained classification head: pick a classifier job")
    with model_cache().classifier(claimed.base_model, weights) as model:
        reply = classify(model, claimed.request["text"])
    return partial(
        completions.finish_classification,
        probabilities=reply.probabilities,
        prompt_tokens=reply.tokens,
        truncated=reply.truncated,
    )


def _predict(claimed: completions.Claimed, weights: Path | None):
    """The tagger's entities, the answer span, or the generated target; returns how to record it."""
    from worker.ml import InferenceError
    from worker.ml.task_inference import predict

    if weights is None:
        raise InferenceError("a base model has no trained head: pick a tagger, question answering or seq2seq job")
    with model_cache().task_model(claimed.base_model, weights) as model:
        result = predict(model, claimed.request)
    return partial(completions.finish_prediction, result=result)
