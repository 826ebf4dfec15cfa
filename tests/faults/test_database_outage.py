"""A database that goes away for a few seconds while a job trains: the worker's per-step
check and its flush wait it out instead of failing the attempt. The outage is real: the
reporter talks to Postgres through a TCP relay the test cuts and restores."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from app.core.blobs import blob_store
from app.core.tables import Job, JobState
from tests.helpers import add_job, forget_cached_settings
from worker.database_reporter import DatabaseReporter


class Relay:
    """Forwards TCP connections to `target`; `cut()` drops every connection and refuses new
    ones until `restore()`, as a database host that vanished would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up.clear()
        for connection in self.connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.connections = []

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def relayed_database(db, migrated_database, monkeypatch):
    parts = urlsplit(migrated_database)
    relay = Relay((parts.hostname, parts.port or 5432))
    relayed = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}"))
    monkeypatch.setenv("TUNELAB_DATABASE_URL", relayed)
    forget_cached_settings()
    yield relay
    relay.close()
    forget_cached_settings()


def test_a_short_database_outage_pauses_training_instead_of_failing_it(make_account, db, relayed_database):
    job = add_job(db, make_account(), JobState.running)
    reporter = DatabaseReporter(job.id, blob_store())
    reporter.progress(3, 12)
    assert reporter.should_stop() is False  # through the relay

    relayed_database.cut()
    threading.Timer(4.0, relayed_database.restore).start()
    started = time.monotonic()
    reporter.progress(4, 12)
    assert reporter.should_stop() is False, "the job is still running once the database is back"
    assert time.monotonic() - started >= 3.5, "it waited for the database"
    reporter.log({"loss": 1.0}, 4)
    reporter.flush()
    db.expire_all()
    assert db.get(Job, job.id).step == 4 and db.get(Job, job.id).train_loss == 1.0
