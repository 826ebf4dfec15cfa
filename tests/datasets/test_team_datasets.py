"""Storing an accepted upload: row and file together or not at all, also when two identical
uploads race each other."""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager

from sqlalchemy import text

from app.core.blobs import blob_store
from app.core.database import new_session, session_scope
from app.core.tables import Dataset
from app.datasets.team_datasets import dataset_key, store_upload
from app.datasets.upload import ReceivedUpload
from app.datasets.validation import DatasetValidator
from tests.helpers import chat_rows, jsonl, wait_for


@contextmanager
def _received(content: bytes):
    """An upload as receive_upload leaves it: staged in the store, hashed, validated."""
    validator = DatasetValidator()
    validator.feed(content)
    report = validator.finish()
    store = blob_store()
    with store.staging("upload") as (handle, path):
        handle.write(content)
        handle.flush()
        yield ReceivedUpload(
            staged_path=path,
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
            filename="c.jsonl",
            fields={},
            report=report,
            _store=store,
        )


def _waiting_on_a_lock() -> bool:
    with session_scope() as session:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return session.execute(text(query)).scalar_one() > 0


def test_two_identical_uploads_at_once_both_succeed_and_the_file_survives(db, make_account):
    acme = make_account()
    content = jsonl(chat_rows(6))
    key = dataset_key(acme.team_id, hashlib.sha256(content).hexdigest())
    outcome: dict = {}

    def second_upload() -> None:
        with session_scope() as session, _received(content) as upload:
            dataset, duplicate = store_upload(
                session, upload=upload, team_id=acme.team_id, user_id=acme.user_id, name="second"
            )
            outcome["result"] = (dataset.id, duplicate)

    first = new_session()
    try:
        with _received(content) as upload:
            # The first upload's row is written but not committed when the second one arrives:
            # the second sees no dataset yet, stores its file, and waits on the unique index.
            upload.commit(key)
            row = Dataset(
                team_id=acme.team_id,
                created_by_id=acme.user_id,
                name="first",
                filename="c.jsonl",
                format="chat",
                sha256=upload.sha256,
                size_bytes=len(content),
                row_count=6,
                blob_key=key,
            )
            first.add(row)
            first.flush()
            racer = threading.Thread(target=second_upload)
            racer.start()
            wait_for(_waiting_on_a_lock, timeout=30, message="the second upload to wait on the first one's row")
            first.commit()
            racer.join(timeout=30)
    finally:
        first.close()

    assert outcome["result"] == (row.id, True), "the second upload is told the dataset is already there"
    assert blob_store().path(key).read_bytes() == content, "the file both rows' clients were promised survives"
    assert db.query(Dataset).count() == 1
