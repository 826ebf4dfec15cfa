"""Jobs on real Celery worker processes (not eager mode), with Redis as the broker and
Postgres as the database: a tiny model trained end to end, a cancel, and a worker killed
with SIGKILL in the middle of a job."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.core.tables import Artifact, Job, JobState
from tests.helpers import add_dataset, chat_rows, tiny_spec, wait_for


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


def test_a_job_trains_end_to_end_on_a_worker(acme, db, workers):
    workers.start()
    job_id = _launch(acme, db, workers, max_steps=12, save_steps=6)
    job = wait_for(lambda: _finished(acme, job_id), timeout=180, message="the job to finish")
    assert job["state"] == "succeeded", job["error"]
    assert job["step"] == job["total_steps"] == 12 and job["progress"] == 1.0
    assert job["trained_tokens"] > 0 and job["train_loss"] is not None and job["attempts"] == 1

    train = [m for m in acme.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()]
    assert [m["step"] for m in train] == list(range(1, 13))
    assert train[-1]["values"]["loss"] < train[0]["values"]["loss"]
    assert {"loss", "learning_rate", "grad_norm", "epoch", "tokens_per_second"} <= set(train[0]["values"])

    messages = [e["message"] for e in acme.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()]
    assert messages[0].startswith("Job created") and messages[1].startswith("Training started on ")
    assert "Saved checkpoint at step 6" in messages and messages[-1] == "Job succeeded after 12 steps"
    assert any(m.startswith("Read 48 rows from colours.jsonl") for m in messages), "the dataset by its name"
    assert "Saved the adapter (PEFT format)" in messages

    checkpoints = acme.client.get(f"/api/jobs/{job_id}/checkpoints").json()
    assert [c["step"] for c in checkpoints] == [6, 12]
    kinds = {a["kind"] for a in acme.client.get(f"/api/jobs/{job_id}/artifacts").json()}
    assert kinds == {"checkpoint", "adapter"}
    adapter = db.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "adapter"))
    from app.config import get_settings

    assert (get_settings().blobs_path / adapter.blob_key / "adapter_config.json").is_file()


def test_a_running_job_stops_within_a_step_when_cancelled(acme, db, workers):
    workers.start()
    job_id = _launch(acme, db, workers, max_steps=5000, save_steps=5)
    wait_for(lambda: _job(acme, job_id)["step"] >= 6, timeout=180, message="training to pass step 6")
    cancel = acme.client.post(f"/api/jobs/{job_id}/cancel").json()
    assert cancel["state"] == "cancelling"
    step_at_cancel = _job(acme, job_id)["step"]

    job = wait_for(lambda: _finished(acme, job_id), timeout=60, message="the cancel")
    assert job["state"] == "cancelled"
    assert job["step"] <= step_at_cancel + 2, "training went on after the cancel"
    assert job["trained_tokens"] > 0, "the tokens trained before the cancel are counted"
    messages = [e["message"] for e in acme.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()]
    assert messages[-1].startswith("Job cancelled at step")
    checkpoints = acme.client.get(f"/api/jobs/{job_id}/checkpoints").json()
    assert checkpoints and checkpoints[-1]["step"] >= 5, "the last checkpoint is kept"


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
    assert db.get(Job, job_id) is not None


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


def test_downloads_of_a_finished_job(acme, db, workers, tmp_path, make_account):
    """The adapter archive loads with PeftModel.from_pretrained as it is; the metrics CSV has
    OpenAI's result-file columns; nobody outside the team can download anything."""
    import csv
    import io
    import zipfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.helpers import TINY_MODEL

    workers.start()
    job_id = _launch(acme, db, workers, max_steps=6, save_steps=3)
    assert wait_for(lambda: _finished(acme, job_id), timeout=180, message="the job")["state"] == "succeeded"

    response = acme.client.get(f"/api/jobs/{job_id}/adapter.zip")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert f'filename="tunelab-job-{job_id}-adapter.zip"' in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert all(name.startswith(f"tunelab-job-{job_id}-adapter/") for name in archive.namelist())
    archive.extractall(tmp_path)
    folder = tmp_path / f"tunelab-job-{job_id}-adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}

    from app.config import get_settings

    base = AutoModelForCausalLM.from_pretrained(get_settings().models_path / TINY_MODEL)
    model = PeftModel.from_pretrained(base, folder).eval()
    tokens = torch.tensor([[1, 5, 9, 14, 20]])
    with torch.no_grad():
        tuned = model(tokens).logits
        with model.disable_adapter():
            plain = model(tokens).logits
    assert not torch.allclose(tuned, plain), "the trained adapter changes the model's output"

    card = acme.client.get(f"/api/jobs/{job_id}/model-card")
    assert card.status_code == 200 and TINY_MODEL in card.text and "colours.jsonl" in card.text

    rows = list(csv.DictReader(io.StringIO(acme.client.get(f"/api/jobs/{job_id}/metrics.csv").text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert {"step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"} <= set(rows[0])
    assert float(rows[-1]["train_loss"]) > 0

    checkpoint = acme.client.get(f"/api/jobs/{job_id}/checkpoints").json()[0]
    archive = acme.client.get(f"/api/jobs/{job_id}/artifacts/{checkpoint['id']}/archive")
    assert archive.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(archive.content)).namelist()

    outsider = make_account(team="globex")
    for path in (
        f"/api/jobs/{job_id}/adapter.zip",
        f"/api/jobs/{job_id}/metrics.csv",
        f"/api/jobs/{job_id}/model-card",
        f"/api/jobs/{job_id}/artifacts/{checkpoint['id']}/archive",
    ):
        assert outsider.client.get(path).status_code == 404
