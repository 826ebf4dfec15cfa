"""The Celery client: how the app hands a job to the workers.

Only the job's id travels, as JSON. `commit_then_enqueue` is the one way a
request hands work over. The worker side (`worker.celery_app`) builds on the
same configuration and registers the tasks; the app never imports it, it sends by name.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from contextlib import closing
from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.core.errors import Unavailable

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

EMBEDDED_SCHEME = "embedded"  # the embedded broker's URL scheme: app.embedded_broker registers it

RUN_JOB_TASK = "tunelab.run_job"
MERGE_ADAPTER_TASK = "tunelab.merge_adapter"
EXPORT_GGUF_TASK = "tunelab.export_gguf"
EVALUATE_JOB_TASK = "tunelab.evaluate_job"
RUN_COMPLETION_TASK = "tunelab.run_completion"
DELIVER_WEBHOOK_TASK = "tunelab.deliver_webhook"
JOIN_GANG_TASK = "tunelab.join_gang"
DEFAULT_QUEUE = "default"


def make_celery(settings: Settings) -> Celery:
    # Imported here: Celery and kombu are a tenth of the web app's start-up, and only
    # enqueueing needs them.
    from celery import Celery

    from app.core import embedded_broker  # noqa: F401 - registers the embedded+sqlite:// transport

    celery = Celery("tunelab", broker=settings.celery_broker_url)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A job is acknowledged only when it has finished; if the worker process dies, the
        # message goes back to the queue instead of being lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=not settings.embedded_broker,
    )
    return celery


def _transport_options(settings: Settings) -> dict:
    url = settings.celery_broker_url
    if url.startswith(EMBEDDED_SCHEME + "+"):
        # How soon an idle worker sees a new job.
        return {"polling_interval": settings.broker_polling_interval_s}
    if url.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacknowledged message after this long: set above the longest job,
        # or a long run would be started twice. Crashed workers are handled by the reaper instead.
        return {"visibility_timeout": settings.broker_visibility_timeout_s}
    return {}


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def devices_of(spec: dict) -> int:
    """The devices a job (its stored spec) trains on at once, on each of its nodes."""
    return int(spec.get("num_devices") or 1)


def nodes_of(spec: dict) -> int:
    """The workers (nodes) a job (its stored spec) trains on at once."""
    return int(spec.get("num_nodes") or 1)


def device_queue(queue: str, num_devices: int = 1) -> str:
    """The broker queue of a job of `queue` that needs `num_devices` devices: the queue itself for
    one, `queue.N-devices` for more. Only a worker that owns N devices takes from the latter."""
    return queue if num_devices <= 1 else f"{queue}.{num_devices}-devices"


def device_queues(queue: str, devices: int) -> list[str]:
    """The broker queues a worker owning `devices` devices takes `queue`'s jobs from: those of
    every job that fits it, one device up to all of them."""
    return [device_queue(queue, count) for count in range(1, devices + 1)]


GANG_SUFFIX = ".gang"


def gang_queue(queue: str, num_devices: int = 1) -> str:
    """The broker queue of the "join" messages of a multi-node job of `queue` whose nodes each need
    `num_devices` devices: only a worker owning that many takes them (`queue.N-devices.gang`)."""
    return f"{queue}.{num_devices}-devices{GANG_SUFFIX}"


def is_gang_queue(queue: str) -> bool:
    """Whether `queue` only carries the join messages of multi-node jobs (plumbing, not a queue
    a user submits to)."""
    return queue.endswith(GANG_SUFFIX)


def worker_queues(queue: str, devices: int) -> list[str]:
    """Every broker queue a training worker owning `devices` devices takes from for `queue`: the
    jobs that fit it (`device_queues`), then the gangs it can join as one of their nodes."""
    return [*device_queues(queue, devices), *(gang_queue(queue, count) for count in range(1, devices + 1))]


def enqueue_job(job_id: int, queue: str = DEFAULT_QUEUE, num_devices: int = 1) -> None:
    get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=device_queue(queue, num_devices))


def enqueue_gang_join(job_id: int, queue: str, num_devices: int, *, join: dict, expires_in_s: float) -> None:
    """Ask one more worker of `queue` (owning `num_devices` devices) to join a multi-node job's gang
    as a node: `join` says where its rendezvous is (JSON). The message expires with the gang's
    timeout, so a worker that comes later does not join a gang that has given up."""
    get_celery().send_task(
        JOIN_GANG_TASK, args=[job_id, join], queue=gang_queue(queue, num_devices), expires=expires_in_s
    )


def enqueue_merge(job_id: int, queue: str) -> None:
    """Build a finished job's merged model on a worker of the job's own queue (it needs the
    memory of the base model, as training did)."""
    get_celery().send_task(MERGE_ADAPTER_TASK, args=[job_id], queue=queue)


def enqueue_gguf_export(job_id: int, queue: str, quantization: str, hub_repo: str | None) -> None:
    """Convert a finished job's merged model to GGUF (merging first when needed) on a worker of
    the job's own queue, and push it to `hub_repo` when one is named."""
    get_celery().send_task(EXPORT_GGUF_TASK, args=[job_id, quantization, hub_repo], queue=queue)


def enqueue_evaluation(evaluation_id: int, queue: str) -> None:
    """Evaluate a finished job's weights on another dataset, on a worker of the job's own queue."""
    get_celery().send_task(EVALUATE_JOB_TASK, args=[evaluation_id], queue=queue)


def enqueue_completion(completion_id: int) -> None:
    """Hand a chat request to the inference workers. The message expires when the app has
    stopped waiting for it, so a worker that starts later does not answer a forgotten request."""
    settings = get_settings()
    get_celery().send_task(
        RUN_COMPLETION_TASK,
        args=[completion_id],
        queue=settings.inference_queue,
        expires=settings.inference_pickup_timeout_s,
    )


def enqueue_webhook_delivery(delivery_id: int) -> None:
    """Hand a webhook delivery to the webhook workers (never a training worker, which may be busy for hours)."""
    get_celery().send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=get_settings().webhooks_queue)


def commit_then_enqueue(
    session: Session, send: Callable[[], None], *, on_failure: Callable[[], None], message: str
) -> None:
    """Commit the session (the worker must find the row when it gets the id), then `send`.
    When the broker cannot be reached, `on_failure` records that in the session, which is
    committed too, and Unavailable(`message`) is raised: the caller hears 503, the row says why."""
    session.commit()
    try:
        send()
    except Exception as error:  # noqa: BLE001 - any broker failure
        log.error("could not enqueue (%s: %s)", type(error).__name__, error)
        on_failure()
        session.commit()
        raise Unavailable(message) from None


def _job_id_of(payload: str | bytes | dict) -> int | None:
    """The job id a run-job message carries (Celery's protocol 2: the body is base64 of
    [args, kwargs, embed]); None for any other message."""
    message = json.loads(payload) if isinstance(payload, (str, bytes)) else payload
    if message.get("headers", {}).get("task") != RUN_JOB_TASK:
        return None
    args = json.loads(base64.b64decode(message["body"]))[0]
    return args[0] if args and isinstance(args[0], int) else None


def _redis(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


_EMBEDDED_QUEUE = "FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id WHERE q.name = ?"


def _embedded_rows(url: str, query: str, queue: str) -> list[tuple]:
    """Rows of `query` on the embedded broker's SQLite file (kombu's tables; a message it has
    delivered stays, with visible = 0, until it is acknowledged)."""
    import sqlite3

    with closing(sqlite3.connect(url.removeprefix(EMBEDDED_SCHEME + "+sqlite:///"), timeout=30)) as connection:
        try:
            return list(connection.execute(query, (queue,)))
        except sqlite3.OperationalError:  # no message was ever sent: kombu has not made its tables
            return []


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def _is_embedded(url: str) -> bool:
    return url.startswith(EMBEDDED_SCHEME + "+sqlite:///")


def job_ids_in_broker(queue: str) -> set[int] | None:
    """Ids of the jobs whose run message waits in `queue`, or was delivered from it and not
    yet acknowledged. None when this kind of broker cannot be looked into."""
    url = get_settings().celery_broker_url
    if _is_redis(url):
        client = _redis(url)
        payloads = [*client.lrange(queue, 0, -1)]
        # Delivered, not yet acknowledged: [message, exchange, routing key] by delivery tag.
        for value in client.hvals("unacked"):
            message, _exchange, routing_key = json.loads(value)
            if routing_key == queue:
                payloads.append(message)
    elif _is_embedded(url):
        payloads = [row[0] for row in _embedded_rows(url, f"SELECT m.payload {_EMBEDDED_QUEUE}", queue)]
    else:
        return None
    return {job_id for payload in payloads if (job_id := _job_id_of(payload)) is not None}


def queue_length(queue: str) -> int | None:
    """How many messages wait in `queue` for a worker (delivered ones not counted); None when
    the broker cannot be looked into or cannot be reached."""
    url = get_settings().celery_broker_url
    try:
        if _is_redis(url):
            return int(_redis(url).llen(queue))
        if _is_embedded(url):
            rows = _embedded_rows(url, f"SELECT count(*) {_EMBEDDED_QUEUE} AND m.visible", queue)
            return rows[0][0] if rows else 0
    except Exception as error:  # noqa: BLE001 - a page must show "unknown", not fail
        log.warning("could not read the length of queue %s (%s: %s)", queue, type(error).__name__, error)
    return None


def broker_reachable(timeout: float = 2.0) -> bool:
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable" to a health check
        return False
