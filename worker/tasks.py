"""Celery tasks: each a one-line call into a plain function that a test can call directly."""

from __future__ import annotations

from app.core.queue import EXPORT_GGUF_TASK, MERGE_ADAPTER_TASK, RUN_COMPLETION_TASK, RUN_JOB_TASK
from worker import chat_job, gguf_job, merge_job, training_job
from worker.celery_app import celery_app


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: int) -> None:
    training_job.run_job(job_id)


@celery_app.task(name=MERGE_ADAPTER_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def merge_adapter(job_id: int) -> None:
    merge_job.merge_job(job_id)


@celery_app.task(name=EXPORT_GGUF_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def export_gguf(job_id: int, quantization: str, hub_repo: str | None = None) -> None:
    gguf_job.export_gguf_job(job_id, quantization, hub_repo)


@celery_app.task(name=RUN_COMPLETION_TASK, ignore_result=True)
def run_completion(completion_id: int) -> None:
    chat_job.run_completion(completion_id)
