"""The worker's reporter against the real database: what the job's row says while it trains."""

from __future__ import annotations

from app.core.blobs import blob_store
from app.core.tables import Job, JobState
from tests.helpers import add_job
from worker.database_reporter import DatabaseReporter


def test_the_epoch_moves_with_the_step_not_only_at_logging_steps(make_account, db):
    job = add_job(db, make_account(), JobState.running)
    reporter = DatabaseReporter(job.id, blob_store())
    reporter.progress(5, 20, 1.25)
    reporter.should_stop()
    reporter.log({"loss": 0.9, "epoch": 1.25}, 5)  # a logging step (every 5)
    reporter.flush()

    for step in (6, 7):
        reporter.progress(step, 20, step / 4)
        assert reporter.should_stop() is False
    db.expire_all()
    row = db.get(Job, job.id)
    assert (row.step, row.epoch, row.train_loss) == (7, 1.75, 0.9)

    # The logging step's point, flushed late (after the row has moved on), does not set it back.
    reporter.log({"loss": 0.8, "epoch": 1.5}, 6)
    reporter.flush()
    db.expire_all()
    assert (db.get(Job, job.id).epoch, db.get(Job, job.id).train_loss) == (1.75, 0.8)
