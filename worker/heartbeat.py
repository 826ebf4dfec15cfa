"""A worker process's heartbeat: a row in `workers`, refreshed every few seconds.

/healthz counts fresh rows; the job reaper treats a job whose worker row went stale as
orphaned; the Workers page shows each row with the devices its last beat read
(`worker.devices`). The row is deleted on a clean shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from sqlalchemy import delete, select

from app.config import get_settings
from app.core.database import session_scope
from app.core.tables import WorkerProcess, utcnow
from worker.devices import read_devices

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        name: str,
        queues: str,
        device: str | None = None,
        devices: Callable[[], list[dict]] = read_devices,
    ) -> None:
        self.name = name
        self.queues = queues
        self.device = device
        self.read_devices = devices
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        try:
            devices = self.read_devices()
        except Exception:  # a broken reading must not silence the heartbeat itself
            log.exception("could not read this worker's devices")
            devices = None
        with session_scope() as session:
            row = session.scalar(select(WorkerProcess).where(WorkerProcess.name == self.name))
            if row is None:
                row = WorkerProcess(
                    name=self.name,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=self.queues,
                    device=self.device,
                )
                session.add(row)
            row.last_seen_at = utcnow()
            if devices is not None:
                row.devices = devices

    def _run(self) -> None:
        interval = get_settings().worker_heartbeat_s
        while not self._stop.wait(interval):
            try:
                self.beat()
            except Exception:
                log.exception("worker heartbeat failed")

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="tunelab-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with session_scope() as session:
            session.execute(delete(WorkerProcess).where(WorkerProcess.name == self.name))
