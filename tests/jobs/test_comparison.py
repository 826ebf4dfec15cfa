"""Jobs compared (GET /api/compare): the settings that differ, resolved as training used them,
the ones they share, and where each job ended."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.core.tables import Job, JobState, utcnow
from app.jobs.timeline import MetricPoint, add_metrics
from tests.helpers import TINY_MODEL, add_dataset, chat_rows


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme")


def ended_job(db, account, *, name: str, spec: dict, rows: list[dict], dataset_name: str, **values) -> Job:
    """A finished job row as a worker leaves it, with its final numbers."""
    dataset = add_dataset(db, account, rows, name=dataset_name)
    job = Job(
        team_id=account.team_id,
        created_by_id=account.user_id,
        name=name,
        base_model=TINY_MODEL,
        method=spec.get("method", "lora"),
        spec={"base_model": TINY_MODEL, **spec},
        dataset_id=dataset.id,
        state=JobState.succeeded,
        **values,
    )
    db.add(job)
    db.commit()
    return job


def _row(rows: list[dict], name: str) -> list:
    return next(row["values"] for row in rows if row["name"] == name)


def test_the_settings_that_differ_are_listed_resolved_and_the_equal_ones_apart(acme, db):
    started = utcnow() - timedelta(minutes=5)
    lora = ended_job(
        db,
        acme,
        name="lora",
        spec={"max_steps": 40, "batch_size": 4},
        rows=chat_rows(12),
        dataset_name="colours.jsonl",
        step=40,
        train_loss=0.25,
        eval_loss=0.5,
        trained_tokens=12_345,
        started_at=started,
        finished_at=started + timedelta(seconds=90),
    )
    add_metrics(db, lora, [MetricPoint(20, "train", {"loss": 0.9, "mean_token_accuracy": 0.5})])
    add_metrics(db, lora, [MetricPoint(40, "train", {"loss": 0.25, "mean_token_accuracy": 0.875})])
    add_metrics(db, lora, [MetricPoint(40, "eval", {"eval_loss": 0.5, "eval_mean_token_accuracy": 0.75})])
    full = ended_job(
        db,
        acme,
        name="full",
        spec={"method": "full", "max_steps": 40, "batch_size": 8},
        rows=chat_rows(14),
        dataset_name="more colours.jsonl",
        step=40,
        train_loss=0.125,
    )
    db.commit()

    response = acme.client.get("/api/compare", params={"jobs": [full.id, lora.id]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [job["name"] for job in body["jobs"]] == ["full", "lora"], "in the order asked"

    differing = {row["name"]: row["values"] for row in body["differing"]}
    assert differing["method"] == ["full", "lora"]
    assert differing["learning_rate"] == [2e-5, 2e-4], "the learning rate each method picks when none is given"
    assert differing["batch_size"] == [8, 4]
    assert differing["dataset"] == ["more colours.jsonl", "colours.jsonl"]
    assert differing["lora.r"] == [None, 16], "full fine-tuning uses no LoRA settings"
    equal = {row["name"]: row["values"] for row in body["equal"]}
    assert equal["max_steps"] == [40, 40] and equal["seed"] == [42, 42] and "base_model" in equal
    assert "quantization.quant_type" in equal, "used by neither: not a difference"
    assert not differing.keys() & equal.keys()

    metrics = body["metrics"]
    assert _row(metrics, "train_loss") == [0.125, 0.25] and _row(metrics, "eval_loss") == [None, 0.5]
    assert _row(metrics, "train_accuracy") == [None, 0.875], "the last train point's"
    assert _row(metrics, "eval_accuracy") == [None, 0.75]
    assert _row(metrics, "trained_tokens") == [None, 12_345] and _row(metrics, "steps") == [40, 40]
    assert _row(metrics, "duration_s") == [None, 90.0]
    assert next(row for row in metrics if row["name"] == "eval_loss")["better"] == "lower"


def test_only_the_callers_jobs_compare_and_within_bounds(acme, make_account, db):
    mine = ended_job(db, acme, name="mine", spec={}, rows=chat_rows(6), dataset_name="a.jsonl")
    globex = make_account(team="globex")
    theirs = ended_job(db, globex, name="theirs", spec={}, rows=chat_rows(7), dataset_name="b.jsonl")
    refused = acme.client.get("/api/compare", params={"jobs": [mine.id, theirs.id]})
    assert refused.status_code == 404 and refused.json()["detail"] == f"job not found: {theirs.id}"
    assert acme.client.get("/api/compare", params={"jobs": list(range(1, 14))}).status_code == 422
    assert acme.client.get("/api/compare").status_code == 422
    alone = acme.client.get("/api/compare", params={"jobs": [mine.id, mine.id]}).json()
    assert [job["id"] for job in alone["jobs"]] == [mine.id] and alone["differing"] == []


def test_a_spec_an_older_version_stored_is_compared_as_it_was_given(acme, db):
    old = ended_job(
        db, acme, name="old", spec={"batch_size": 2, "retired_setting": "x"}, rows=chat_rows(6), dataset_name="a.jsonl"
    )
    new = ended_job(db, acme, name="new", spec={"batch_size": 2}, rows=chat_rows(7), dataset_name="a.jsonl")
    body = acme.client.get("/api/compare", params={"jobs": [old.id, new.id]}).json()
    differing = {row["name"]: row["values"] for row in body["differing"]}
    assert differing["retired_setting"] == ["x", None]
    assert differing["learning_rate"] == [None, 2e-4], "the old one's was not given, and is not made up"
    assert {row["name"]: row["values"] for row in body["equal"]}["batch_size"] == [2, 2]


def test_trackers_compare_setting_by_setting(acme, db):
    wandb = {"type": "wandb", "wandb": {"project": "colours", "tags": ["a", "b"]}}
    tracked = ended_job(
        db, acme, name="tracked", spec={"integrations": [wandb]}, rows=chat_rows(12), dataset_name="c.jsonl"
    )
    plain = ended_job(db, acme, name="plain", spec={}, rows=chat_rows(13), dataset_name="d.jsonl")
    body = acme.client.get("/api/compare", params={"jobs": [tracked.id, plain.id]}).json()
    differing = {row["name"]: row["values"] for row in body["differing"]}
    assert differing["integrations.wandb.project"] == ["colours", None]
    assert differing["integrations.wandb.tags"] == [["a", "b"], None]
    assert "integrations" not in differing and "integrations" not in {row["name"] for row in body["equal"]}


def test_each_jobs_best_evaluation_after_the_baseline_sits_beside_its_final_one(acme, db):
    jobs = []
    for rows, (name, points) in enumerate(
        (
            # (step, eval loss, eval accuracy, macro F1): the first overfits after step 20
            ("overfits", [(0, 0.7, 0.5, 0.33), (10, 0.4, 0.8, 0.79), (20, 0.3, 0.9, 0.9), (30, 0.6, 0.85, 0.84)]),
            ("steady", [(0, 0.2, 0.95, 0.95), (10, 0.5, 0.7, 0.7), (20, 0.45, 0.75, 0.74), (30, 0.45, 0.75, 0.74)]),
        ),
        start=6,
    ):
        job = ended_job(db, acme, name=name, spec={}, rows=chat_rows(rows), dataset_name=f"{name}.jsonl", step=30)
        add_metrics(
            db,
            job,
            [
                MetricPoint(step, "eval", {"eval_loss": loss, "eval_accuracy": accuracy, "eval_f1_macro": f1})
                for step, loss, accuracy, f1 in points
            ],
        )
        jobs.append(job)
    db.commit()
    metrics = acme.client.get("/api/compare", params={"jobs": [job.id for job in jobs]}).json()["metrics"]
    assert _row(metrics, "eval_accuracy") == [0.85, 0.75] and _row(metrics, "eval_f1_macro") == [0.84, 0.74]
    assert _row(metrics, "best_eval_loss") == [0.3, 0.45] and _row(metrics, "best_eval_loss_step") == [20, 20]
    assert _row(metrics, "best_eval_accuracy") == [0.9, 0.75], "the base model's 0.95 at step 0 is not the run's"
    assert _row(metrics, "best_eval_accuracy_step") == [20, 20]
    assert _row(metrics, "best_eval_f1_macro") == [0.9, 0.74]
    assert next(row for row in metrics if row["name"] == "best_eval_accuracy")["better"] == "higher"
