"""Celery tasks: each a one-line call into a plain function that a test can call directly."""

from __future__ import annotations

from app.core.queue import (
    DELIVER_WEBHOOK_TASK,
    EVALUATE_JOB_TASK,
    EXPORT_GGUF_TASK,
    JOIN_GANG_TASK,
    MERGE_ADAPTER_TASK,
    RUN_COMPLETION_TASK,
    RUN_JOB_TASK,
)
from app.webhooks import delivery
from worker import chat_job, evaluation_job, gguf_job, merge_job, training_job
from worker.celery_app import celery_app


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: int) -> None:
    training_job.run_job(job_id)


# Acknowledged on receipt: a join message is for one attempt of the job, which its leader gives up
# when the gang does not form; redelivering it later would be of no use.
@celery_app.task(name=JOIN_GANG_TASK, ignore_result=True)
def join_gang(job_id: int, join: dict) -> None:
    training_job.run_gang_node(job_id, join)


@celery_app.task(name=MERGE_ADAPTER_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def merge_adapter(job_id: int) -> None:
    merge_job.merge_job(job_id)


@celery_app.task(name=EXPORT_GGUF_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def export_gguf(job_id: int, quantization: str, hub_repo: str | None = None) -> None:
    gguf_job.export_gguf_job(job_id, quantization, hub_repo)


@celery_app.task(name=EVALUATE_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def evaluate_job(evaluation_id: int) -> None:
    evaluation_job.evaluate_job(evaluation_id)


@celery_app.task(name=RUN_COMPLETION_TASK, ignore_result=True)
def run_completion(completion_id: int) -> None:
    chat_job.run_completion(completion_id)


@celery_app.task(name=DELIVER_WEBHOOK_TASK, bind=True, max_retries=None, ignore_result=True)
def deliver_webhook(self, delivery_id: int) -> None:
    # One try per run; Celery's retry (a countdown message) waits out the backoff, and the
    # delivery itself bounds the tries (TUNELAB_WEBHOOKS_MAX_ATTEMPTS).
    if (retry_in := delivery.deliver(delivery_id)) is not None:
        raise self.retry(countdown=retry_in)
