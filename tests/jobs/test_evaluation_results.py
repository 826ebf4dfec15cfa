"""A classifier's evaluation as the job hands it out: the result CSV's accuracy columns and the
`/v1` checkpoint metrics under OpenAI's names, from a real training run reported to the database
as a worker reports it."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import select

from app.contract.spec import TrainingSpec
from app.core.blobs import blob_store
from app.core.tables import JobEvent, JobState
from app.jobs.artifacts import job_output_key
from app.jobs.states import transition
from tests.helpers import TINY_MODEL, add_dataset, add_job, warm_and_cool_rows
from worker.database_reporter import DatabaseReporter
from worker.ml import train


@pytest.fixture
def classifier_job(make_account, models_env, db, tmp_path):
    """A classifier job trained for 12 steps, evaluated every 4 on 12 held-out rows."""
    acme = make_account(team="acme", role="member")
    rows = warm_and_cool_rows(48)
    dataset = add_dataset(db, acme, rows, name="labels.jsonl")
    job = add_job(db, acme, JobState.queued, dataset=dataset)
    spec = {
        "base_model": TINY_MODEL,
        "max_steps": 12,
        "learning_rate": 3e-3,
        "batch_size": 4,
        "logging_steps": 2,
        "max_seq_length": 64,
        "eval_split": 0.25,
        "eval_steps": 4,
        "save_steps": 4,
    }
    job.spec = spec
    transition(db, job, JobState.running)
    db.commit()
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    reporter = DatabaseReporter(job.id, blob_store()).start()
    try:
        train(
            TrainingSpec.model_validate(spec),
            train_file=tmp_path / "labels.jsonl",
            output_dir=blob_store().path(job_output_key(job.id)),  # where its worker writes
            reporter=reporter,
            models_dir=models_env,
        )
    finally:
        reporter.close()
    return acme, job


def test_the_result_csv_and_v1_checkpoints_carry_a_classifiers_accuracy(classifier_job, db):
    acme, job = classifier_job
    rows = list(csv.DictReader(io.StringIO(acme.client.get(f"/api/jobs/{job.id}/metrics.csv").text)))
    by_step = {int(row["step"]): row for row in rows}
    assert by_step[0]["valid_loss"] and not by_step[0]["train_loss"], "the baseline: evaluated, not trained"
    for step in (0, 4, 8, 12):
        row = by_step[step]
        for column in ("valid_accuracy", "valid_mean_token_accuracy", "full_valid_mean_token_accuracy"):
            assert 0 <= float(row[column]) <= 1, (step, column, row)
        assert row["full_valid_loss"] == row["valid_loss"]
        assert row["valid_f1_macro"]
    for step in (2, 4, 6, 8, 10, 12):
        assert 0 <= float(by_step[step]["train_accuracy"]) <= 1
        assert by_step[step]["train_mean_token_accuracy"] == by_step[step]["train_accuracy"]

    checkpoints = acme.client.get(f"/v1/fine_tuning/jobs/ftjob-{job.id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in checkpoints] == [12, 8]  # the two kept, newest first
    metrics = checkpoints[0]["metrics"]
    assert set(metrics) == {
        "step",
        "train_loss",
        "train_mean_token_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
        "full_valid_loss",
        "full_valid_mean_token_accuracy",
        "train_accuracy",  # a classifier's own names beside OpenAI's
        "valid_accuracy",
        "valid_f1_macro",
    }
    assert metrics["valid_mean_token_accuracy"] == metrics["valid_accuracy"]
    assert metrics["valid_accuracy"] == pytest.approx(float(by_step[12]["valid_accuracy"]), rel=1e-5)  # CSV: 6 digits

    evaluations = [
        e.data["evaluation"]
        for e in db.scalars(select(JobEvent).where(JobEvent.job_id == job.id))
        if "evaluation" in e.data
    ]
    assert [e["step"] for e in evaluations] == [0, 4, 8, 12]
    assert all(sum(map(sum, e["confusion_matrix"])) == 12 for e in evaluations)
