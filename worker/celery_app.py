"""The Celery worker: `celery -A worker.celery_app worker` (or `tunelab worker`).

Same configuration as the app's client (`app.core.queue`), plus the tasks and the process
hooks: a fresh database pool in every forked child, a heartbeat for the main process.
"""

from __future__ import annotations

import logging
import os

from celery.signals import (
    celeryd_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from app.core.database import dispose_engines
from app.core.queue import get_celery
from app.jobs.recovery import reap_orphans
from worker import training_job
from worker.database_reporter import shutdown_requested
from worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)

# Progress bars (transformers' "Loading weights", hub downloads, tqdm) are for terminals: in a
# worker, Celery logs everything written to stderr as a WARNING line. Jobs report their
# progress as events instead. Set before the pool's processes import transformers.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

celery_app = get_celery()
celery_app.conf.imports = ("worker.tasks",)
# How long a pool process lives is the worker command's choice (`tunelab worker`): a fresh one
# for every training job, so that all of a job's GPU memory is returned when it ends; one for
# good on an inference worker, so that its loaded models answer the next request at once.

_heartbeat: Heartbeat | None = None


@celeryd_init.connect
def _note_process_recycling(options=None, **_kwargs) -> None:
    # In the main process, before the pool forks: its processes inherit the flag.
    training_job.one_job_per_process = (options or {}).get("max_tasks_per_child") == 1


@worker_process_init.connect
def _fresh_pool_after_fork(**_kwargs) -> None:
    # The parent's pooled connections must not be shared with the child.
    dispose_engines()


@worker_shutting_down.connect
def _ask_running_jobs_to_stop(**_kwargs) -> None:
    """A warm shutdown waits for the running task; a training job could take hours. Ask it
    to stop at its next step instead: it keeps a checkpoint and goes back to the queue,
    where another worker (or this one, restarted) resumes it."""
    shutdown_requested.set()


@worker_ready.connect
def _start_heartbeat(sender=None, **_kwargs) -> None:
    global _heartbeat
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values())) if sender else "default"
    _heartbeat = Heartbeat(name=sender.hostname if sender else "worker", queues=queues, device=_device_name())
    _heartbeat.start()
    # Jobs left running by a worker that died on this host resume now, not after a timeout.
    try:
        if requeued := reap_orphans():
            log.info("requeued orphaned jobs %s", requeued)
    except Exception:
        log.exception("could not look for orphaned jobs")


@worker_shutdown.connect
def _stop_heartbeat(**_kwargs) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


def _device_name() -> str:
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"cuda:{visible}" if visible else "auto"
