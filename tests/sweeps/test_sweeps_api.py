"""Sweeps through the API, without workers: what is checked before anything is stored, how
many trials start at once, how trials launch as others end, cancelling, the ranking."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.core.tables import Job, JobState, Sweep
from app.jobs.states import transition
from app.sweeps.scheduling import advance_running_sweeps
from tests.helpers import add_dataset, chat_rows, tiny_spec


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme", role="member")


def _body(dataset_id: int, **overrides) -> dict:
    body = {
        "name": "lr and rank",
        "base": {"spec": tiny_spec(max_steps=4), "dataset_id": dataset_id, "queue": "nobody"},
        "space": {"strategy": "grid", "parameters": {"learning_rate": [1e-3, 1e-2], "lora.r": [4, 8]}},
        "max_concurrent": 2,
    }
    body.update(overrides)
    return body


def _trials(db, sweep_id: int) -> list[Job]:
    db.expire_all()
    return list(db.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.sweep_trial)))


def test_a_grid_starts_as_many_trials_as_allowed_each_with_its_values(acme, db):
    dataset = add_dataset(db, acme, chat_rows())
    response = acme.client.post("/api/sweeps", json=_body(dataset.id))
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["trial_count"] == 4 and sweep["metric"] == "train_loss" and sweep["state"] == "running"
    assert sweep["counts"] == {"queued": 2, "pending": 2}
    jobs = _trials(db, sweep["id"])
    assert [(job.sweep_trial, job.spec["learning_rate"], job.spec["lora"]["r"]) for job in jobs] == [
        (0, 1e-3, 4),
        (1, 1e-3, 8),
    ]
    assert all(job.state == JobState.queued and job.queue == "nobody" for job in jobs)
    assert "trial 1" in jobs[1].name and "lora.r=8" in jobs[1].name
    shown = acme.client.get(f"/api/jobs/{jobs[1].id}").json()
    assert (shown["sweep_id"], shown["sweep_trial"]) == (sweep["id"], 1)


def test_the_next_trial_starts_when_one_ends_and_the_sweep_finishes_with_its_best(acme, db):
    dataset = add_dataset(db, acme, chat_rows())
    sweep_id = acme.client.post("/api/sweeps", json=_body(dataset.id)).json()["id"]
    losses = {0: 0.9, 1: 0.4, 2: 0.7, 3: None}  # trial 3 fails
    for _ in range(3):
        for job in _trials(db, sweep_id):
            if job.state == JobState.queued:
                transition(db, job, JobState.running)
                if losses[job.sweep_trial] is None:
                    transition(db, job, JobState.failed, error="out of memory")
                else:
                    transition(db, job, JobState.succeeded, train_loss=losses[job.sweep_trial])
                db.commit()
        advance_running_sweeps()  # as the app's periodic step (or the trial's worker) does
    assert len(_trials(db, sweep_id)) == 4
    sweep = acme.client.get(f"/api/sweeps/{sweep_id}").json()
    assert sweep["state"] == "finished" and sweep["finished_at"]
    assert [(t["number"], t["value"], t["best"]) for t in sweep["trials"]] == [
        (1, 0.4, True),
        (2, 0.7, False),
        (0, 0.9, False),
        (3, None, False),
    ]
    assert sweep["best_trial"] == 1 and sweep["counts"] == {"succeeded": 3, "failed": 1}


def test_maximizing_ranks_the_highest_first(acme, db):
    dataset = add_dataset(db, acme, chat_rows())
    body = _body(dataset.id, direction="maximize", max_concurrent=4)
    sweep_id = acme.client.post("/api/sweeps", json=body).json()["id"]
    for job, loss in zip(_trials(db, sweep_id), (0.1, 0.5, 0.3, 0.2), strict=True):
        transition(db, job, JobState.running)
        transition(db, job, JobState.succeeded, train_loss=loss)
    db.commit()
    sweep = acme.client.get(f"/api/sweeps/{sweep_id}").json()
    assert [t["value"] for t in sweep["trials"]] == [0.5, 0.3, 0.2, 0.1] and sweep["best_trial"] == 1


def test_a_random_search_draws_the_same_trials_from_the_same_seed(acme, db):
    dataset = add_dataset(db, acme, chat_rows())
    space = {
        "strategy": "random",
        "trials": 5,
        "seed": 7,
        "parameters": {
            "learning_rate": {"kind": "log_uniform", "low": 1e-5, "high": 1e-2},
            "lora.r": {"kind": "choice", "values": [4, 8, 16]},
        },
    }
    first = acme.client.post("/api/sweeps", json=_body(dataset.id, space=space, max_concurrent=1)).json()
    second = acme.client.post("/api/sweeps", json=_body(dataset.id, space=space, max_concurrent=1)).json()
    assert first["trial_count"] == 5
    values = [t["values"] for t in sorted(first["trials"], key=lambda t: t["number"])]
    assert values == [t["values"] for t in sorted(second["trials"], key=lambda t: t["number"])]
    assert all(1e-5 <= v["learning_rate"] <= 1e-2 and v["lora.r"] in (4, 8, 16) for v in values)
    assert len({v["learning_rate"] for v in values}) == 5


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"space": {"parameters": {"base_model": ["other"]}}}, "space", "cannot be swept"),
        ({"space": {"parameters": {"lora.r": [8, 0]}}}, "space", "trial 1 (lora.r=0) is not a valid job"),
        ({"space": {"parameters": {"learning_rate": {"kind": "uniform", "low": 1, "high": 2}}}}, "space", "list"),
        ({"space": {"parameters": {"learning_rate": [1e-3] * 9, "lora.r": [4] * 8}}}, "space", "at most 64"),
        ({"metric": "eval_loss"}, "metric", "validation dataset or an eval split"),
        ({"max_concurrent": 0}, "max_concurrent", "greater than or equal to 1"),
    ],
)
def test_a_bad_sweep_is_refused_beside_its_field_and_nothing_is_stored(acme, db, change, where, says):
    dataset = add_dataset(db, acme, chat_rows())
    response = acme.client.post("/api/sweeps", json=_body(dataset.id, **change))
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(where in error["loc"] and says in error["msg"] for error in errors), errors
    assert db.scalar(select(Sweep)) is None and db.scalar(select(Job)) is None


def test_a_trial_spec_is_checked_as_a_job_is(acme, db):
    dataset = add_dataset(db, acme, chat_rows())
    body = _body(dataset.id, space={"parameters": {"max_seq_length": [128, 100_000]}})
    response = acme.client.post("/api/sweeps", json=body)
    assert response.status_code == 422 and "handles at most" in response.text
    assert db.scalar(select(Job)) is None


def test_cancelling_a_sweep_cancels_its_trials_and_launches_no_more(acme, db):
    dataset = add_dataset(db, acme, chat_rows())
    sweep_id = acme.client.post("/api/sweeps", json=_body(dataset.id)).json()["id"]
    response = acme.client.post(f"/api/sweeps/{sweep_id}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert response.json()["counts"] == {"cancelled": 2, "pending": 2}
    advance_running_sweeps()
    assert len(_trials(db, sweep_id)) == 2
    assert acme.client.post(f"/api/sweeps/{sweep_id}/cancel").status_code == 200  # twice is fine


def test_two_launchers_at_once_start_each_trial_once(acme, db):
    """Two app processes' periodic steps (threads here) advancing the same sweep together."""
    import threading

    dataset = add_dataset(db, acme, chat_rows())
    sweep_id = acme.client.post("/api/sweeps", json=_body(dataset.id, max_concurrent=1)).json()["id"]
    for _ in range(3):
        job = _trials(db, sweep_id)[-1]
        transition(db, job, JobState.cancelled)
        db.commit()
        threads = [threading.Thread(target=advance_running_sweeps) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        jobs = _trials(db, sweep_id)
        assert [job.sweep_trial for job in jobs] == list(range(len(jobs)))
        assert sum(job.state == JobState.queued for job in jobs) == 1


def test_sweeps_are_listed_only_in_their_team(acme, db, make_account):
    dataset = add_dataset(db, acme, chat_rows())
    acme.client.post("/api/sweeps", json=_body(dataset.id))
    assert [s["name"] for s in acme.client.get("/api/sweeps").json()] == ["lr and rank"]
    globex = make_account(team="globex", role="member")
    assert globex.client.get("/api/sweeps").json() == []
    other = globex.client.post("/api/sweeps", json=_body(dataset.id))
    assert other.status_code == 422 and "dataset not found in this team" in other.text


def test_an_unreachable_broker_spends_no_trial_and_the_sweep_starts_once_it_answers(acme, db, monkeypatch):
    import os

    from tests.helpers import forget_cached_settings

    dataset = add_dataset(db, acme, chat_rows())
    broker = os.environ.get("TUNELAB_BROKER_URL")
    monkeypatch.setenv("TUNELAB_BROKER_URL", "redis://127.0.0.1:1/0")
    forget_cached_settings()
    response = acme.client.post("/api/sweeps", json=_body(dataset.id))
    assert response.status_code == 201 and response.json()["counts"] == {"pending": 4}
    assert _trials(db, response.json()["id"]) == []
    if broker is None:
        monkeypatch.delenv("TUNELAB_BROKER_URL")
    else:
        monkeypatch.setenv("TUNELAB_BROKER_URL", broker)
    forget_cached_settings()
    advance_running_sweeps()
    assert [job.state for job in _trials(db, response.json()["id"])] == [JobState.queued, JobState.queued]
