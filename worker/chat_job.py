"""Answering chat requests on an inference worker: claim the request, generate with the
process's cached models, write the text into the request's row as it comes.

The Celery task is a one-line call into `run_completion`. An inference worker keeps its
process (no max-tasks-per-child), so the models it has loaded answer the next request at once.
"""

from __future__ import annotations

import logging
import os
import time

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
    """Answer one chat request. Never raises: a failure is written into the request."""
    from worker.ml import TrainingError
    from worker.ml.inference import generate_chat

    with session_scope() as session:
        claimed = completions.claim(session, completion_id, worker_identity(os.getpid()))
    if claimed is None:
        return
    writer = _TextWriter(completion_id)
    error = reply = None
    try:
        weights = blob_store().path(claimed.weights_key) if claimed.weights_key else None
        sampling = Sampling.model_validate(claimed.request["sampling"])
        with model_cache().use(claimed.base_model, weights) as model:
            reply = generate_chat(model, claimed.request["messages"], sampling, on_text=writer.add)
    except TrainingError as failure:
        error = str(failure)
    except Exception as failure:
        log.exception("chat request %s failed", completion_id)
        error = f"Generation failed unexpectedly: {type(failure).__name__}: {failure}"
    with session_scope() as session:
        if error is not None:
            completions.fail(session, completion_id, error)
        else:
            completions.finish(
                session,
                completion_id,
                text=reply.text,
                finish_reason=reply.finish_reason,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
            )
