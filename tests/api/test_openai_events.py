"""A job's /v1 events: its messages and a `metrics` event for each logged step and evaluation,
newest first, each exactly once across the pages that `after` walks."""

from __future__ import annotations

import pytest

from app.core.tables import JobState
from app.jobs import timeline
from tests.helpers import add_job


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme", role="member")


def _events(account, job_id: int, **params) -> dict:
    response = account.client.get(f"/v1/fine_tuning/jobs/ftjob-{job_id}/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_messages_and_metrics_page_together_newest_first_each_once(acme, db):
    """A classifier's steps: its loss and its share of rows right, in training and at evaluations."""
    job = add_job(db, acme, JobState.running)
    job.total_steps = 6
    for step in range(1, 7):
        points = [timeline.MetricPoint(step, "train", {"loss": 1 / step, "accuracy": step / 6, "grad_norm": 0.5})]
        if step % 3 == 0:
            points.append(timeline.MetricPoint(step, "eval", {"eval_loss": 2 / step, "eval_accuracy": step / 8}))
        timeline.add_metrics(db, job, points)
        timeline.add_event(db, job, f"message {step}")
    db.commit()

    whole = _events(acme, job.id, limit=100)
    assert not whole["has_more"]
    described = [
        (event["type"], event["message"] if event["type"] == "message" else event["data"]) for event in whole["data"]
    ]
    assert described[:4] == [
        ("message", "message 6"),
        (
            "metrics",
            {"step": 6, "train_loss": 1 / 6, "train_mean_token_accuracy": 1.0, "train_accuracy": 1.0, "total_steps": 6},
        ),
        (
            "metrics",
            {
                "step": 6,
                "valid_loss": 2 / 6,
                "valid_mean_token_accuracy": 6 / 8,
                "full_valid_loss": 2 / 6,
                "full_valid_mean_token_accuracy": 6 / 8,
                "valid_accuracy": 6 / 8,
                "total_steps": 6,
            },
        ),
        ("message", "message 5"),
    ]
    assert [event["message"] for event in whole["data"][1:3]] == [
        "Step 6/6: training loss=0.1667",
        "Step 6/6: validation loss=0.3333",
    ]
    assert len(whole["data"]) == 6 + 8  # six messages, six train points and two evaluations

    paged, after = [], None
    while True:
        page = _events(acme, job.id, limit=4, **({"after": after} if after else {}))
        paged += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert [event["id"] for event in paged] == [event["id"] for event in whole["data"]]


def test_another_jobs_event_id_is_no_cursor(acme, db):
    job = add_job(db, acme, JobState.running)
    other = add_job(db, acme, JobState.running, dataset=job.dataset)
    timeline.add_event(db, other, "elsewhere")
    db.commit()
    other_id = _events(acme, other.id)["data"][0]["id"]
    response = acme.client.get(f"/v1/fine_tuning/jobs/ftjob-{job.id}/events", params={"after": other_id})
    assert response.status_code == 400 and response.json()["error"]["param"] == "after"
