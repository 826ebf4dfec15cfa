"""A 4-trial grid on the tiny model, trained by a real Celery worker: the sweep keeps at most
two trials queued or running, launches the next as one ends, and ends with every trial ranked
and the best one marked."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import select

from app.core.tables import Job
from tests.helpers import Account, SharedServices, add_dataset, chat_rows, tiny_spec, wait_for


@dataclass
class FinishedSweep:
    acme: Account
    id: int
    sweep: dict  # as the API shows it once finished
    jobs: list[Job]


@pytest.fixture(scope="class")
def finished_sweep(migrated_database, shared_models_dir, redis_url, tmp_path_factory):
    from app.core.database import session_scope

    with SharedServices(migrated_database, tmp_path_factory.mktemp("data"), shared_models_dir, redis_url) as services:
        acme = services.account(team="acme")
        services.workers.start()
        with session_scope() as session:
            dataset = add_dataset(session, acme, chat_rows())
        body = {
            "name": "lr × rank",
            "base": {
                "spec": tiny_spec(max_steps=4, eval_split=0.25, eval_steps=2, logging_steps=2),
                "dataset_id": dataset.id,
                "queue": services.workers.queue,
            },
            "space": {"strategy": "grid", "parameters": {"learning_rate": [1e-4, 2e-2], "lora.r": [4, 8]}},
            "max_concurrent": 2,
        }
        response = acme.client.post("/api/sweeps", json=body)
        assert response.status_code == 201, response.text
        sweep_id = response.json()["id"]

        def finished():
            sweep = acme.client.get(f"/api/sweeps/{sweep_id}").json()
            return sweep if sweep["state"] != "running" else None

        sweep = wait_for(finished, timeout=400, interval=0.5, message="the sweep to finish")
        with session_scope() as session:
            jobs = list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.sweep_trial)))
            session.expunge_all()
        yield FinishedSweep(acme, sweep_id, sweep, jobs)


class TestAGridSweptOnAWorker:
    def test_it_ends_with_four_succeeded_trials_ranked_by_eval_loss_and_the_best_marked(self, finished_sweep):
        sweep = finished_sweep.sweep
        assert sweep["state"] == "finished" and sweep["metric"] == "eval_loss"
        assert sweep["counts"] == {"succeeded": 4}
        values = [trial["value"] for trial in sweep["trials"]]
        assert all(isinstance(v, float) for v in values) and values == sorted(values)
        assert [trial["best"] for trial in sweep["trials"]] == [True, False, False, False]
        assert sweep["best_trial"] == sweep["trials"][0]["number"]
        assert {(t["values"]["learning_rate"], t["values"]["lora.r"]) for t in sweep["trials"]} == {
            (1e-4, 4),
            (1e-4, 8),
            (2e-2, 4),
            (2e-2, 8),
        }

    def test_never_more_than_two_trials_were_queued_or_running_at_once(self, finished_sweep):
        jobs = finished_sweep.jobs
        assert [job.sweep_trial for job in jobs] == [0, 1, 2, 3]
        in_flight = [sum(1 for other in jobs if other.created_at <= job.created_at < other.finished_at) for job in jobs]
        assert max(in_flight) == 2  # the bound was reached, and never passed
        assert jobs[2].created_at >= min(jobs[0].finished_at, jobs[1].finished_at)

    def test_each_trial_trained_with_its_own_values(self, finished_sweep):
        sweep_values = {t["job_id"]: t["values"] for t in finished_sweep.sweep["trials"]}
        for job in finished_sweep.jobs:
            assert job.spec["learning_rate"] == sweep_values[job.id]["learning_rate"]
            assert job.spec["lora"]["r"] == sweep_values[job.id]["lora.r"]
            assert job.step == 4 and job.eval_loss is not None
