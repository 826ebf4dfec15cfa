"""A real tiny-model job on a real worker (Redis, Postgres): its sample answers are stored at
each evaluation and come down the job's stream; then the finished job is evaluated on another
dataset by a worker, and what the app refuses before anything is queued."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from app.core.tables import JobState
from tests.api.test_streams import read_sse
from tests.helpers import Account, SharedServices, add_job, chat_rows, jsonl, once, tiny_spec, wait_for

EVAL_STEPS = [3, 6]


def _finished(account: Account, job_id: int) -> str | None:
    state = account.client.get(f"/api/jobs/{job_id}").json()["state"]
    return state if state in ("succeeded", "failed", "cancelled") else None


@dataclass
class Trained:
    account: Account
    other_team: Account
    job_id: int
    base_url: str

    def api(self, method: str, path: str, **kwargs):
        return self.account.client.request(method, f"/api/jobs/{self.job_id}{path}", **kwargs)

    def upload(self, account: Account, rows: list[dict], name: str) -> int:
        response = account.client.post("/api/datasets", files={"file": (name, jsonl(rows))})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    @once
    def evaluation(self) -> dict:
        """Evaluate the job on a dataset of other questions and wait for the worker to finish it."""
        rows = [
            {"messages": [{"role": "user", "content": f"Name colour {i}?"}, {"role": "assistant", "content": "Red."}]}
            for i in range(8)
        ]
        dataset_id = self.upload(self.account, rows, "other.jsonl")
        requested = self.api("POST", "/evaluations", json={"dataset_id": dataset_id})
        assert requested.status_code == 202, requested.text
        assert requested.json()["state"] == "queued" and requested.json()["dataset_name"] == "other.jsonl"

        def done():
            found = [e for e in self.api("GET", "/evaluations").json() if e["id"] == requested.json()["id"]]
            return found[0] if found and found[0]["state"] in ("succeeded", "failed") else None

        return wait_for(done, timeout=240, interval=0.5, message="the evaluation")


@pytest.fixture(scope="class")
def trained(migrated_database, shared_models_dir, redis_url, tmp_path_factory):
    services = SharedServices(migrated_database, tmp_path_factory.mktemp("data"), shared_models_dir, redis_url)
    with services:
        services.workers.start()
        acme, other = services.account(team="acme"), services.account(team="other")
        dataset = acme.client.post("/api/datasets", files={"file": ("colours.jsonl", jsonl(chat_rows()))}).json()
        spec = tiny_spec(max_steps=6, eval_split=0.25, eval_steps=3, eval_samples=4, eval_sample_max_new_tokens=8)
        body = {"spec": spec, "dataset_id": dataset["id"], "queue": services.workers.queue}
        response = acme.client.post("/api/jobs", json=body)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert wait_for(lambda: _finished(acme, job_id), timeout=300, interval=0.5, message="the job") == "succeeded"
        yield Trained(acme, other, job_id, services.serve())


class TestSamplesOfARealJob:
    def test_every_evaluation_stores_answers_to_the_same_prompts_beside_the_base_answers(self, trained):
        sets = trained.api("GET", "/samples").json()
        assert [(s["kind"], s["step"]) for s in sets] == [("base", 0)] + [("generation", step) for step in EVAL_STEPS]
        prompts = [[(row["prompt"], row["reference"]) for row in s["rows"]] for s in sets]
        assert len(prompts[0]) == 4 and all(p == prompts[0] for p in prompts)
        assert all("What colour is the" in prompt for prompt, _ in prompts[0])
        assert all(isinstance(row["answer"], str) and row["loss"] > 0 for s in sets for row in s["rows"])
        assert trained.api("GET", "/samples", params={"kind": "base"}).json() == sets[:1]

    def test_the_stream_carries_the_samples_in_order_with_the_metrics(self, trained):
        headers = {"Authorization": f"Bearer {trained.account.token}"}
        with httpx.stream("GET", f"{trained.base_url}/api/jobs/{trained.job_id}/stream", headers=headers) as response:
            events = read_sse(response, until=lambda events: events[-1]["event"] == "end")
        streamed = [e["data"] for e in events if e["event"] == "samples"]
        assert [(s["kind"], s["step"]) for s in streamed] == [("base", 0)] + [("generation", s) for s in EVAL_STEPS]
        assert streamed == trained.api("GET", "/samples").json()
        ids = [int(e["id"]) for e in events if e.get("id")]
        assert ids == sorted(ids) and len(ids) == len(set(ids)), "samples share the job's sequence numbers"
        # Each evaluation's answers come after that evaluation's metric point.
        order = [(e["event"], e["data"].get("step")) for e in events if e["event"] in ("samples", "metric")]
        for step in EVAL_STEPS:
            assert order.index(("samples", step)) > next(
                i for i, (kind, at) in enumerate(order) if kind == "metric" and at == step
            )

    def test_another_team_sees_no_samples(self, trained):
        assert trained.other_team.client.get(f"/api/jobs/{trained.job_id}/samples").status_code == 404


class TestEvaluationOnAnotherDataset:
    def test_a_worker_evaluates_the_finished_job_and_stores_the_metrics(self, trained):
        evaluation = trained.evaluation()
        assert evaluation["state"] == "succeeded", evaluation
        assert evaluation["metrics"]["eval_loss"] > 0 and evaluation["finished_at"]
        assert 0 <= evaluation["metrics"]["eval_mean_token_accuracy"] <= 1
        events = trained.api("GET", "/events", params={"limit": 1000}).json()
        states = [e["data"]["evaluation_state"] for e in events if e["data"].get("evaluation") == evaluation["id"]]
        assert states[0] == "queued" and "running" in states and states[-1] == "succeeded"
        curve = trained.api("GET", "/metrics", params={"split": "eval"}).json()
        assert [point["step"] for point in curve] == [0, *EVAL_STEPS], "the job's own curves stay as training left them"

    def test_another_teams_dataset_is_refused(self, trained):
        theirs = trained.upload(trained.other_team, chat_rows(4), "theirs.jsonl")
        response = trained.api("POST", "/evaluations", json={"dataset_id": theirs})
        assert response.status_code == 422 and "dataset" in response.text

    def test_another_teams_job_is_not_found(self, trained):
        theirs = trained.upload(trained.other_team, chat_rows(5), "mine.jsonl")
        url = f"/api/jobs/{trained.job_id}/evaluations"
        assert trained.other_team.client.post(url, json={"dataset_id": theirs}).status_code == 404
        assert trained.other_team.client.get(url).status_code == 404


def test_an_unfinished_job_is_not_evaluated(db, make_account):
    account = make_account(team="acme")
    job = add_job(db, account, JobState.running)
    response = account.client.post(f"/api/jobs/{job.id}/evaluations", json={"dataset_id": job.dataset_id})
    assert response.status_code == 409 and "running" in response.json()["detail"]
    assert account.client.get(f"/api/jobs/{job.id}/evaluations").json() == []
