"""Evaluating a finished job on another dataset, on request (POST /api/jobs/{id}/evaluations):
the base model with the job's final weights, evaluated on the dataset as training evaluated.
Progress and the outcome are job events (`data.evaluation`: the evaluation's id); the metrics
land in the evaluation's row. Only a queued evaluation runs: a message delivered twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from app.config import get_settings
from app.contract.spec import TrainingSpec
from app.core.blobs import blob_store
from app.core.database import session_scope
from app.core.tables import Dataset, EvaluationState, Job, JobEvaluation, utcnow
from app.jobs.artifacts import final_weights
from app.jobs.timeline import add_event
from worker.ml.reporting import MemoryReporter

log = logging.getLogger(__name__)


def _event(job_id: int, evaluation_id: int, message: str, *, level: str = "info", state: str = "running") -> None:
    with session_scope() as session:
        add_event(
            session,
            session.get(Job, job_id),
            f"Evaluation #{evaluation_id}: {message}",
            level=level,
            evaluation=evaluation_id,
            evaluation_state=state,
        )


@dataclass
class _ProgressReporter(MemoryReporter):
    """What loading and evaluating say, passed on as the job's events; metrics stay here (the
    evaluation's row keeps them, the job's curves do not)."""

    job_id: int = 0
    evaluation_id: int = 0

    def event(self, message: str, level: str = "info", **data: Any) -> None:
        super().event(message, level, **data)
        _event(self.job_id, self.evaluation_id, message, level=level)


def _finish(evaluation_id: int, state: EvaluationState, *, metrics=None, error: str | None = None) -> None:
    with session_scope() as session:
        evaluation = session.get(JobEvaluation, evaluation_id)
        evaluation.state, evaluation.finished_at = state, utcnow()
        evaluation.metrics, evaluation.error = metrics or {}, error


def evaluate_job(evaluation_id: int) -> None:
    """Run one queued evaluation. Never raises for a failed one: its row and the job's events say why."""
    from worker import ml

    store = blob_store()
    with session_scope() as session:
        evaluation = session.get(JobEvaluation, evaluation_id)
        if evaluation is None or evaluation.state != EvaluationState.queued:
            return
        job = session.get(Job, evaluation.job_id)
        dataset = session.get(Dataset, evaluation.dataset_id) if evaluation.dataset_id else None
        training = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        weights = final_weights(session, job)
        evaluation.state = EvaluationState.running
        job_id, spec = job.id, TrainingSpec.model_validate(job.spec)
        dataset_name = dataset.name if dataset else None
        eval_key = dataset.blob_key if dataset else None
        train_key = training.blob_key if training else None
        weights_key, step = (weights.blob_key, weights.step) if weights else (None, None)
    if eval_key is None or not store.exists(eval_key) or weights_key is None or not store.exists(weights_key):
        missing = "dataset" if eval_key is None or not store.exists(eval_key) else "job's weights"
        _finish(evaluation_id, EvaluationState.failed, error=f"the {missing} no longer exists")
        _event(job_id, evaluation_id, f"failed: the {missing} no longer exists", level="error", state="failed")
        return
    _event(job_id, evaluation_id, f"evaluating the weights of step {step} on {dataset_name}")
    try:
        metrics = ml.evaluate_on(
            spec,
            weights=store.path(weights_key),
            eval_file=store.path(eval_key),
            train_file=store.path(train_key) if train_key and store.exists(train_key) else None,
            reporter=_ProgressReporter(job_id=job_id, evaluation_id=evaluation_id),
            models_dir=get_settings().models_path,
        )
    except Exception as failure:
        if not isinstance(failure, ml.TrainingError):
            log.exception("evaluation %s of job %s failed", evaluation_id, job_id)
        _finish(evaluation_id, EvaluationState.failed, error=str(failure))
        _event(job_id, evaluation_id, f"failed: {failure}", level="error", state="failed")
        return
    _finish(evaluation_id, EvaluationState.succeeded, metrics=metrics)
    loss = metrics.get("eval_loss")
    summary = f"eval loss {loss:.4f}" if loss is not None else "done"
    _event(job_id, evaluation_id, f"{summary} on {dataset_name}", state="succeeded")
