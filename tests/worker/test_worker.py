"""Jobs on real Celery worker processes (not eager mode), with Redis as the broker and
Postgres as the database: a tiny model trained end to end, a cancel, and a worker killed
with SIGKILL in the middle of a job."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from app.core.tables import Artifact, Job, JobState
from tests.helpers import TINY_MODEL, Account, SharedServices, add_dataset, chat_rows, tiny_spec, wait_for

# What a checkpoint folder needs for training to resume from it (and the adapter to load).
RESUME_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
}


@pytest.fixture
def acme(make_account, redis_broker):
    return make_account(team="acme", role="member")


def _launch(account, db, workers, **spec):
    dataset = add_dataset(db, account, chat_rows())
    body = {"spec": tiny_spec(**spec), "dataset_id": dataset.id, "queue": workers.queue}
    response = account.client.post("/api/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _job(account, job_id) -> dict:
    return account.client.get(f"/api/jobs/{job_id}").json()


def _finished(account, job_id):
    job = _job(account, job_id)
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


@dataclass
class TrainedJob:
    acme: Account  # the team whose job it is
    globex: Account  # another team
    id: int
    job: dict  # as the API shows it once finished

    def get(self, path: str = "", **params):
        response = self.acme.client.get(f"/api/jobs/{self.id}{path}", params=params)
        assert response.status_code == 200, response.text
        return response


@pytest.fixture(scope="class")
def trained_job(migrated_database, shared_models_dir, redis_url, tmp_path_factory):
    """One job of 12 steps, a checkpoint every 6, trained once on a real worker for the class."""
    from app.core.database import session_scope

    data_dir = tmp_path_factory.mktemp("data")
    with SharedServices(migrated_database, data_dir, shared_models_dir, redis_url) as services:
        acme, globex = services.account(team="acme"), services.account(team="globex")
        services.workers.start()
        with session_scope() as session:
            job_id = _launch(acme, session, services.workers, max_steps=12, save_steps=6)
        job = wait_for(lambda: _finished(acme, job_id), timeout=180, message="the job to finish")
        yield TrainedJob(acme, globex, job_id, job)


class TestAJobTrainedOnAWorker:
    """Each test checks one thing about the same job, trained once (`trained_job`)."""

    def test_it_succeeds_with_every_step_and_its_tokens_counted(self, trained_job):
        job = trained_job.job
        assert job["state"] == "succeeded", job["error"]
        assert job["step"] == job["total_steps"] == 12 and job["progress"] == 1.0
        assert job["trained_tokens"] > 0 and job["train_loss"] is not None and job["attempts"] == 1

    def test_its_loss_curve_has_every_step_and_falls(self, trained_job):
        train = trained_job.get("/metrics", split="train").json()
        assert [m["step"] for m in train] == list(range(1, 13))
        assert train[-1]["values"]["loss"] < train[0]["values"]["loss"]
        assert {"loss", "learning_rate", "grad_norm", "epoch", "tokens_per_second"} <= set(train[0]["values"])

    def test_its_events_tell_the_story_in_order(self, trained_job):
        messages = [e["message"] for e in trained_job.get("/events", limit=1000).json()]
        assert messages[0].startswith("Job created") and messages[1].startswith("Training started on ")
        assert "Saved checkpoint at step 6" in messages and messages[-1] == "Job succeeded after 12 steps"
        assert any(m.startswith("Read 48 rows from colours.jsonl") for m in messages), "the dataset by its name"
        assert "Saved the adapter (PEFT format)" in messages
        story = [
            "Job created",
            "Training started on ",
            "Read 48 rows from colours.jsonl",
            f"Loaded model {TINY_MODEL} ",
            "Saved checkpoint at step 6",
            "Saved checkpoint at step 12",
            "Saved the adapter (PEFT format)",
            "Job succeeded after 12 steps",
        ]
        found = [next((i for i, m in enumerate(messages) if m.startswith(line)), None) for line in story]
        assert None not in found and found == sorted(found), list(zip(story, found, strict=True))

    def test_its_checkpoints_are_listed_with_their_step_and_size(self, trained_job):
        checkpoints = trained_job.get("/checkpoints").json()
        assert [c["step"] for c in checkpoints] == [6, 12]
        assert all(c["kind"] == "checkpoint" and c["size_bytes"] > 0 for c in checkpoints)

    def test_its_artifacts_are_the_checkpoints_and_the_adapter_in_peft_format(self, trained_job):
        from app.config import get_settings
        from app.core.database import session_scope

        artifacts = trained_job.get("/artifacts").json()
        kinds = {a["kind"] for a in artifacts}
        assert kinds == {"checkpoint", "adapter", "tracking"}, "tracking: the TensorBoard files"
        adapters = [a for a in artifacts if a["kind"] == "adapter"]
        assert [(a["step"], a["size_bytes"] > 0) for a in adapters] == [(12, True)], "one adapter, of the last step"
        with session_scope() as session:
            adapter = session.scalar(
                select(Artifact).where(Artifact.job_id == trained_job.id, Artifact.kind == "adapter")
            )
        folder = get_settings().blobs_path / adapter.blob_key
        assert (folder / "adapter_config.json").is_file()
        assert (folder / "adapter_model.safetensors").stat().st_size > 0

    def test_each_checkpoint_downloads_as_a_folder_training_can_resume_from(self, trained_job):
        for checkpoint in trained_job.get("/checkpoints").json():
            step = checkpoint["step"]
            archive = trained_job.get(f"/artifacts/{checkpoint['id']}/archive")
            assert archive.headers["content-type"] == "application/zip"
            folder = f"tunelab-job-{trained_job.id}-checkpoint-step-{step}"
            assert f'filename="{folder}.zip"' in archive.headers["content-disposition"]
            zipped = zipfile.ZipFile(io.BytesIO(archive.content))
            names = zipped.namelist()
            assert all(name.startswith(f"{folder}/") for name in names), names
            assert RESUME_FILES <= {name.removeprefix(f"{folder}/") for name in names}, names
            assert json.loads(zipped.read(f"{folder}/trainer_state.json"))["global_step"] == step
            assert zipped.getinfo(f"{folder}/adapter_model.safetensors").file_size > 0

    def test_its_adapter_archive_loads_with_peft_and_changes_the_output(self, trained_job, tmp_path):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from app.config import get_settings

        job_id = trained_job.id
        response = trained_job.get("/adapter.zip")
        assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
        assert f'filename="tunelab-job-{job_id}-adapter.zip"' in response.headers["content-disposition"]
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        assert all(name.startswith(f"tunelab-job-{job_id}-adapter/") for name in archive.namelist())
        archive.extractall(tmp_path)
        folder = tmp_path / f"tunelab-job-{job_id}-adapter"
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}

        base = AutoModelForCausalLM.from_pretrained(get_settings().models_path / TINY_MODEL)
        model = PeftModel.from_pretrained(base, folder).eval()
        tokens = torch.tensor([[1, 5, 9, 14, 20]])
        with torch.no_grad():
            tuned = model(tokens).logits
            with model.disable_adapter():
                plain = model(tokens).logits
        assert not torch.allclose(tuned, plain), "the trained adapter changes the model's output"

    def test_its_model_card_names_the_base_model_and_the_dataset(self, trained_job):
        card = trained_job.get("/model-card")
        assert card.status_code == 200 and TINY_MODEL in card.text and "colours.jsonl" in card.text
        assert f"base_model: {TINY_MODEL}\n" in card.text, "in the front matter, where the Hugging Face Hub reads it"

    def test_its_metrics_csv_has_openai_result_columns_and_every_step(self, trained_job):
        rows = list(csv.DictReader(io.StringIO(trained_job.get("/metrics.csv").text)))
        assert [int(r["step"]) for r in rows] == list(range(1, 13))
        assert {"step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"} <= set(rows[0])
        assert float(rows[-1]["train_loss"]) > 0

    def test_another_team_gets_404_for_every_download(self, trained_job):
        job_id = trained_job.id
        checkpoint = trained_job.get("/checkpoints").json()[0]
        for path in (
            f"/api/jobs/{job_id}/adapter.zip",
            f"/api/jobs/{job_id}/metrics.csv",
            f"/api/jobs/{job_id}/model-card",
            f"/api/jobs/{job_id}/artifacts/{checkpoint['id']}/archive",
        ):
            assert trained_job.globex.client.get(path).status_code == 404, path


def test_a_running_job_stops_within_a_step_when_cancelled(acme, db, workers):
    """The cancel's event records the steps done when it landed (the worker writes each step
    to the job's row as it asks whether to go on); at most the step then in progress finishes."""
    workers.start()
    job_id = _launch(acme, db, workers, max_steps=5000, save_steps=5)
    wait_for(lambda: _job(acme, job_id)["step"] >= 6, timeout=180, message="training to pass step 6")
    cancel = acme.client.post(f"/api/jobs/{job_id}/cancel").json()
    assert cancel["state"] == "cancelling"

    job = wait_for(lambda: _finished(acme, job_id), timeout=60, message="the cancel")
    assert job["state"] == "cancelled"
    events = acme.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()
    cancelling = [e for e in events if e["data"].get("state") == "cancelling"]
    assert len(cancelling) == 1 and cancelling[0]["message"].startswith("Cancelling")
    steps_done = cancelling[0]["data"]["step"]
    assert steps_done >= 6 and cancel["step"] == steps_done, "the cancel saw every step done before it"
    assert steps_done <= job["step"] <= steps_done + 1, "training went on after the cancel"
    assert job["trained_tokens"] > 0, "the tokens trained before the cancel are counted"
    messages = [e["message"] for e in events]
    assert messages[-1] == f"Job cancelled at step {job['step']}; its checkpoints are kept"
    checkpoints = acme.client.get(f"/api/jobs/{job_id}/checkpoints").json()
    assert checkpoints and checkpoints[-1]["step"] >= 5, "the last checkpoint is kept"
    assert checkpoints[-1]["step"] == job["step"], "the step it stopped at is saved, so it can resume from there"


def test_a_job_survives_its_worker_being_killed(acme, db, workers):
    first = workers.start()
    job_id = _launch(acme, db, workers, max_steps=40, save_steps=5, logging_steps=1)
    wait_for(
        lambda: (
            len(acme.client.get(f"/api/jobs/{job_id}/checkpoints").json()) >= 2 and _job(acme, job_id)["step"] >= 12
        ),
        timeout=240,
        message="two checkpoints",
    )
    workers.kill(first)
    assert _job(acme, job_id)["state"] == "running", "nobody has noticed yet"

    workers.start()  # a worker comes back: it finds the orphan and resumes it
    job = wait_for(lambda: _finished(acme, job_id), timeout=240, message="the resumed job to finish")
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["step"] == 40

    steps = [m["step"] for m in acme.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()]
    assert steps == list(range(1, 41)), "one continuous series: no gap, no duplicate"
    events = acme.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()
    messages = [e["message"] for e in events]
    assert any(m.startswith("Worker lost at step") and "(crash 1 of 3 allowed)" in m for m in messages)
    assert any(m.startswith("Training resumed on") and "(attempt 2)" in m for m in messages)
    assert any(m.startswith("Resuming from the checkpoint at step") for m in messages)
    assert db.get(Job, job_id).crashes == 1, "the row counts the crash it survived"


def test_a_worker_shutting_down_hands_its_job_back_without_counting_a_crash(acme, db, workers):
    first = workers.start()
    job_id = _launch(acme, db, workers, max_steps=30, save_steps=50, logging_steps=1)
    wait_for(lambda: _job(acme, job_id)["step"] >= 5, timeout=180, message="training to pass step 5")
    workers.stop(first)  # returns once the worker has exited: well before the job could have finished
    job = _job(acme, job_id)
    assert job["state"] == "queued" and 5 <= job["step"] < 30
    messages = [e["message"] for e in acme.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()]
    assert messages[-1] == f"Worker stopped at step {job['step']}; the job will resume from there"

    workers.start()
    job = wait_for(lambda: _finished(acme, job_id), timeout=240, message="the job to finish on the next worker")
    assert job["state"] == "succeeded" and job["step"] == 30
    assert db.get(Job, job_id).crashes == 0
    steps = [m["step"] for m in acme.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()]
    assert steps == list(range(1, 31))


def test_a_job_that_keeps_crashing_its_worker_ends_failed(acme, db, workers, monkeypatch):
    from tests.helpers import forget_cached_settings

    monkeypatch.setenv("TUNELAB_JOB_MAX_ATTEMPTS", "1")
    forget_cached_settings()
    first = workers.start()
    job_id = _launch(acme, db, workers, max_steps=5000)
    wait_for(lambda: _job(acme, job_id)["step"] >= 3, timeout=180, message="training to start")
    workers.kill(first)
    workers.start()
    job = wait_for(lambda: _finished(acme, job_id), timeout=60, message="the job to be failed")
    assert job["state"] == "failed"
    assert "stopped 1 times" in job["error"] and "giving up" in job["error"]
    assert db.get(Job, job_id).state == JobState.failed


def test_training_errors_end_the_job_failed_with_a_readable_reason(acme, db, workers):
    from app.config import get_settings

    workers.start()
    dataset = add_dataset(db, acme, chat_rows())
    (get_settings().blobs_path / dataset.blob_key).unlink()  # the file vanished from the blob store
    response = acme.client.post(
        "/api/jobs", json={"spec": tiny_spec(), "dataset_id": dataset.id, "queue": workers.queue}
    )
    job = wait_for(lambda: _finished(acme, response.json()["id"]), timeout=120, message="the failure")
    assert job["state"] == "failed"
    assert job["error"] == "The training dataset no longer exists (it was deleted after the job was created)."
    last = acme.client.get(f"/api/jobs/{job['id']}/events").json()[-1]
    assert last["level"] == "error" and last["data"]["error"] == job["error"]
