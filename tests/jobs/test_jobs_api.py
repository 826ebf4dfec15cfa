"""Launching, listing and cancelling jobs through the API, and the job state machine,
without a worker: what the app promises before any training starts."""

from __future__ import annotations

from itertools import pairwise

import pytest
from sqlalchemy import func, select

from app.core.tables import Job, JobEvent, JobMetric, JobState
from app.jobs.queries import loss_outlines
from app.jobs.recovery import is_orphaned
from app.jobs.states import IllegalTransition, request_cancel, transition
from app.jobs.timeline import MetricPoint, add_event, add_metrics
from tests.helpers import TINY_MODEL, add_dataset, add_job, chat_rows, tiny_spec


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme", role="member")


@pytest.fixture
def dataset(db, acme):
    return add_dataset(db, acme, chat_rows())


def _launch(account, dataset, **overrides):
    body = {"spec": tiny_spec(), "dataset_id": dataset.id, **overrides}
    return account.client.post("/api/jobs", json=body)


def test_a_launched_job_is_queued_with_its_spec_and_defaults(acme, dataset, db):
    response = _launch(acme, dataset, name="colours v1", metadata={"ticket": "ML-42"})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] == "queued" and job["name"] == "colours v1" and job["created_by"] == acme.email
    assert job["spec"]["base_model"] == TINY_MODEL and job["spec"]["max_steps"] == 12
    assert job["spec"]["lora"] == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "use_dora": False,
    }
    assert job["metadata"] == {"ticket": "ML-42"} and job["progress"] is None
    events = acme.client.get(f"/api/jobs/{job['id']}/events").json()
    assert [e["message"] for e in events] == [f"Job created by {acme.email}"]


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"spec": tiny_spec(method="dpo")}, ["body", "spec", "method"], "Input should be 'full', 'lora' or 'qlora'"),
        ({"spec": tiny_spec(learning_rate=5)}, ["body", "spec", "learning_rate"], "less than or equal to 1"),
        ({"spec": tiny_spec(batch_size=0)}, ["body", "spec", "batch_size"], "greater than or equal to 1"),
        ({"spec": tiny_spec(lora={"r": 0})}, ["body", "spec", "lora", "r"], "greater than or equal to 1"),
        ({"spec": tiny_spec(base_model="../../etc/passwd")}, ["body", "spec", "base_model"], "must be a model name"),
        (
            {"spec": tiny_spec(base_model="no-such-model")},
            ["body", "spec", "base_model"],
            "is not in the models directory",
        ),
        (
            {"spec": tiny_spec(max_seq_length=100_000)},
            ["body", "spec", "max_seq_length"],
            "handles at most 4096 tokens",
        ),
        (
            {"spec": tiny_spec(early_stopping_patience=2)},
            ["body", "spec", "early_stopping_patience"],
            "needs evaluation",
        ),
        (
            {"spec": tiny_spec(load_best_model_at_end=True)},
            ["body", "spec", "load_best_model_at_end"],
            "found by evaluation",
        ),
        (
            {"spec": tiny_spec(num_nodes=2, objective="orpo")},
            ["body", "spec"],
            "orpo trains on one device only for now: set num_nodes and num_devices to 1",
        ),
        ({"spec": tiny_spec(num_nodes=0)}, ["body", "spec", "num_nodes"], "greater than or equal to 1"),
        ({"spec": tiny_spec(unknown_knob=1)}, ["body", "spec", "unknown_knob"], "Extra inputs are not permitted"),
        ({"dataset_id": 999_999}, ["body", "dataset_id"], "dataset not found"),
        ({"queue": "GPU; rm -rf"}, ["body", "queue"], "should match pattern"),
    ],
)
def test_bad_specs_are_refused_beside_their_field_and_nothing_is_queued(acme, dataset, db, change, field, message):
    body = {"spec": tiny_spec(), "dataset_id": dataset.id, **change}
    response = acme.client.post("/api/jobs", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(error["loc"] == field and message in error["msg"] for error in errors), errors
    assert db.scalar(select(func.count()).select_from(Job)) == 0


def test_another_teams_dataset_cannot_be_trained_on(make_account, db, models_env):
    acme, globex = make_account(team="acme"), make_account(team="globex")
    theirs = add_dataset(db, acme, chat_rows())
    response = _launch(globex, theirs)
    assert response.status_code == 422 and response.json()["detail"][0]["msg"] == "dataset not found in this team"


def test_viewers_cannot_launch_or_cancel(make_account, db, models_env):
    member = make_account(team="acme", role="member")
    viewer = make_account(team="acme", role="viewer")
    dataset = add_dataset(db, member, chat_rows())
    refused = _launch(viewer, dataset)
    assert refused.status_code == 403 and "viewer" in refused.json()["detail"]
    job = _launch(member, dataset).json()
    assert viewer.client.get(f"/api/jobs/{job['id']}").status_code == 200
    assert viewer.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 403
    assert member.client.get(f"/api/jobs/{job['id']}").json()["state"] == "queued"


def test_cancelling_a_queued_job_is_immediate_and_idempotent(acme, dataset):
    job = _launch(acme, dataset).json()
    cancelled = acme.client.post(f"/api/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert acme.client.post(f"/api/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    messages = [e["message"] for e in acme.client.get(f"/api/jobs/{job['id']}/events").json()]
    assert messages[-1] == "Job cancelled before it started"


def test_a_finished_job_cannot_be_cancelled(acme, dataset, db):
    job = db.get(Job, _launch(acme, dataset).json()["id"])
    transition(db, job, JobState.running)
    transition(db, job, JobState.succeeded)
    db.commit()
    response = acme.client.post(f"/api/jobs/{job.id}/cancel")
    assert response.status_code == 409 and response.json()["detail"] == "the job has already succeeded"


def test_listing_filters_by_state_and_person_and_pages(make_account, db, models_env):
    ada, bob = make_account(team="acme", email="ada@acme.test"), make_account(team="acme", email="bob@acme.test")
    dataset = add_dataset(db, ada, chat_rows())
    ids = [_launch(account, dataset).json()["id"] for account in (ada, bob, ada, bob, ada)]
    ada.client.post(f"/api/jobs/{ids[0]}/cancel")

    page = ada.client.get("/api/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = ada.client.get("/api/jobs", params={"limit": 10, "after": page["data"][-1]["id"]}).json()
    assert [j["id"] for j in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False

    by_bob = ada.client.get("/api/jobs", params={"created_by": "bob@acme.test"}).json()["data"]
    assert sorted(j["id"] for j in by_bob) == [ids[1], ids[3]]
    cancelled = ada.client.get("/api/jobs", params={"state": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert ada.client.get("/api/jobs", params={"state": "exploded"}).status_code == 422


def test_illegal_transitions_are_errors_not_overwrites(acme, dataset, db):
    job = db.get(Job, _launch(acme, dataset).json()["id"])
    with pytest.raises(IllegalTransition, match="cannot go from queued to succeeded"):
        transition(db, job, JobState.succeeded)
    transition(db, job, JobState.running)
    transition(db, job, JobState.succeeded)
    for state in JobState:
        with pytest.raises(IllegalTransition):
            transition(db, job, state)
    db.commit()
    assert db.get(Job, job.id).state == JobState.succeeded


def test_a_stale_read_loses_the_race_instead_of_overwriting(acme, dataset, db):
    """Two processes read the job as running; one cancels, the other tries to succeed it."""
    from app.core.database import session_scope

    job_id = _launch(acme, dataset).json()["id"]
    transition(db, db.get(Job, job_id), JobState.running)
    db.commit()
    with session_scope() as other:
        stale = other.get(Job, job_id)
        with session_scope() as first:
            request_cancel(first, first.get(Job, job_id))
        with pytest.raises(IllegalTransition, match="from cancelling to succeeded"):
            transition(other, stale, JobState.succeeded)
    db.expire_all()
    assert db.get(Job, job_id).state == JobState.cancelling


def test_metric_points_are_idempotent_per_step_and_share_one_sequence_with_events(acme, dataset, db):
    job = db.get(Job, _launch(acme, dataset).json()["id"])
    points = [MetricPoint(step=s, split="train", values={"loss": 3.0 - s / 10}) for s in (1, 2, 3)]
    assert add_metrics(db, job, points) == 3
    add_event(db, job, "Saved checkpoint at step 3")
    # A retried job reports steps 2-4 again: only step 4 is new, and NaN is kept as null.
    again = [MetricPoint(step=s, split="train", values={"loss": float("nan") if s == 4 else 9.0}) for s in (2, 3, 4)]
    assert add_metrics(db, job, again) == 1
    db.commit()

    metrics = acme.client.get(f"/api/jobs/{job.id}/metrics").json()
    assert [(m["step"], m["values"]["loss"]) for m in metrics] == [(1, 2.9), (2, 2.8), (3, 2.7), (4, None)]
    seqs = sorted(
        [m["seq"] for m in metrics] + [e["seq"] for e in acme.client.get(f"/api/jobs/{job.id}/events").json()]
    )
    assert seqs == list(range(1, len(seqs) + 1))
    after = acme.client.get(f"/api/jobs/{job.id}/metrics", params={"after_step": 2}).json()
    assert [m["step"] for m in after] == [3, 4]
    assert db.scalar(select(func.count()).select_from(JobMetric)) == 4
    assert db.get(Job, job.id).train_loss is None  # NaN is no loss to show


def test_an_unreachable_broker_fails_the_launch_cleanly(acme, dataset, db, monkeypatch):
    from tests.helpers import forget_cached_settings

    monkeypatch.setenv("TUNELAB_BROKER_URL", "redis://127.0.0.1:1/0")
    forget_cached_settings()
    response = _launch(acme, dataset)
    assert response.status_code == 503 and "queue is unreachable" in response.json()["detail"]
    job = db.scalar(select(Job))
    assert job.state == JobState.failed and "could not be reached" in job.error
    assert db.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.level == "error")) == 1


def test_dashboard_outlines_keep_the_shape_of_the_whole_run(acme, dataset, db):
    job = db.get(Job, _launch(acme, dataset).json()["id"])
    add_metrics(db, job, [MetricPoint(step=s, split="train", values={"loss": 10.0 / s}) for s in range(1, 501)])
    add_metrics(db, job, [MetricPoint(step=s, split="eval", values={"eval_loss": 1.0}) for s in (100, 200)])
    db.commit()
    outline = loss_outlines(db, [job.id, 999])[job.id]
    steps = [step for step, _ in outline]
    assert 50 <= len(outline) <= 70
    assert steps[0] == 1 and steps[-1] == 500 and steps == sorted(steps)
    assert max(b - a for a, b in pairwise(steps)) <= 9, "evenly spread, not only the last points"
    assert outline[0][1] == 10.0 and outline[-1][1] == 10.0 / 500


def test_a_job_is_orphaned_at_once_when_its_worker_died_here_else_when_its_heartbeat_is_stale(acme, dataset, db):
    import socket
    import subprocess
    from datetime import timedelta

    from app.core.tables import utcnow

    job = db.get(Job, _launch(acme, dataset).json()["id"])
    sleeper = subprocess.Popen(["sleep", "60"])
    transition(db, job, JobState.running, worker=f"{socket.gethostname()}:{sleeper.pid}", heartbeat_at=utcnow())
    assert not is_orphaned(job, stale_after_s=60), "a live worker process holds it"
    sleeper.kill()  # not reaped yet: a zombie, as a SIGKILLed worker can stay in a container
    import time

    time.sleep(0.2)
    assert is_orphaned(job, stale_after_s=60)
    sleeper.wait()
    assert is_orphaned(job, stale_after_s=60)

    job.worker = "another-host:1"
    assert not is_orphaned(job, stale_after_s=60), "another host's process cannot be checked: wait for its heartbeat"
    job.heartbeat_at = utcnow() - timedelta(seconds=61)
    assert is_orphaned(job, stale_after_s=60)


def test_a_job_has_one_name_that_is_also_its_models_suffix(acme, dataset, db):
    named = _launch(acme, dataset, name="support bot v3").json()
    assert (named["name"], named["suffix"]) == ("support bot v3", "support-bot-v3")

    # Through /v1 a job is named by its suffix; the pages and /api show that same name.
    created = acme.client.post(
        "/v1/fine_tuning/jobs", json={"model": TINY_MODEL, "training_file": f"file-{dataset.id}", "suffix": "colours"}
    )
    assert created.status_code == 200, created.text
    job_id = int(created.json()["id"].removeprefix("ftjob-"))
    assert created.json()["suffix"] == "colours"
    assert acme.client.get(f"/api/jobs/{job_id}").json()["name"] == "colours"
    assert '<h1 id="job-title">colours</h1>' in acme.client.get(f"/jobs/{job_id}").text

    # Given a name, /v1 shows it as the suffix.
    assert acme.client.get(f"/v1/fine_tuning/jobs/ftjob-{named['id']}").json()["suffix"] == "support-bot-v3"

    # Neither: a descriptive name, and no suffix (OpenAI's ft:<base>:<team>::ftjob-<id>).
    unnamed = _launch(acme, dataset).json()
    assert (unnamed["name"], unnamed["suffix"]) == (f"{TINY_MODEL} · lora · {dataset.name}", None)


def test_the_spec_panel_shows_the_values_training_uses(acme, dataset, db):
    import json

    for method, rate, blocks in (
        ("lora", 2e-4, {"lora"}),
        ("qlora", 2e-4, {"lora", "quantization"}),
        ("full", 2e-5, set()),
    ):
        spec = tiny_spec(method=method)
        del spec["learning_rate"]  # "auto": the method's default
        job = _launch(acme, dataset, spec=spec).json()
        assert job["spec"]["learning_rate"] is None, "the stored request keeps 'auto'"
        html = acme.client.get(f"/jobs/{job['id']}").text
        used = json.loads(html.split('id="page-data">', 1)[1].split("</script>", 1)[0])["spec_used"]
        assert used["learning_rate"] == rate and used["method"] == method
        assert {"lora", "quantization"} & used.keys() == blocks


def test_a_spec_stored_by_an_older_version_still_shows_on_the_job_page(acme, db):
    job = add_job(db, acme, JobState.succeeded)
    job.spec = {**job.spec, "a_setting_since_removed": 1}
    db.commit()
    page = acme.client.get(f"/jobs/{job.id}")
    assert page.status_code == 200 and "a_setting_since_removed" in page.text
