"""One job on several devices: 2 CPU processes over gloo, started by torchrun from a real
worker, against a single-process run of the same global batch; cancel; a rank killed mid-job."""

from __future__ import annotations

import json
import os
import platform
import signal

import psutil
import pytest

from tests.helpers import add_dataset, chat_rows, tiny_spec, wait_for

# A run whose steps see the same rows whether one process takes 8 of them or two take 4 each:
# packed rows in a seeded random order (no length grouping, which depends on the batch size),
# no dropout, and the learning rate high enough for the curve to move.
SAME_DATA = {"packing": "on", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "learning_rate": 5e-3}


@pytest.fixture
def acme(make_account, redis_broker):
    return make_account(team="acme", role="member")


def _launch(account, db, workers, dataset=None, **spec) -> int:
    dataset = dataset or add_dataset(db, account, chat_rows())
    body = {"spec": tiny_spec(**spec), "dataset_id": dataset.id, "queue": workers.queue}
    response = account.client.post("/api/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _job(account, job_id) -> dict:
    return account.client.get(f"/api/jobs/{job_id}").json()


def _finished(account, job_id):
    job = _job(account, job_id)
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def _losses(account, job_id) -> list[tuple[int, float]]:
    points = account.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()
    return [(point["step"], point["values"]["loss"]) for point in points]


def _messages(account, job_id) -> list[str]:
    return [e["message"] for e in account.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()]


def _ranks_of(worker) -> list[psutil.Process]:
    """The training processes under a worker: the `worker.distributed_job` ranks torchrun started."""
    found = []
    for process in psutil.Process(worker.pid).children(recursive=True):
        try:
            if "worker.distributed_job" in process.cmdline() and "torch.distributed.run" not in process.cmdline():
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_a_job_on_two_processes_follows_the_single_process_loss_curve(acme, db, workers, parallelism):
    """2 processes x 4 rows per step against 1 process x 8 rows: the same rows at each step, the
    gradients averaged over both processes, so the same curve up to float rounding."""
    workers.start(devices=2)
    dataset = add_dataset(db, acme, chat_rows())
    single = _launch(acme, db, workers, dataset, max_steps=8, batch_size=8, **SAME_DATA)
    split = _launch(
        acme, db, workers, dataset, max_steps=8, batch_size=4, num_devices=2, parallelism=parallelism, **SAME_DATA
    )
    for job_id in (single, split):
        job = wait_for(lambda job_id=job_id: _finished(acme, job_id), timeout=300, message=f"job {job_id}")
        assert job["state"] == "succeeded", job["error"]

    one, two = _losses(acme, single), _losses(acme, split)
    assert [step for step, _ in two] == list(range(1, 9)), "rank 0 alone reports: each step once"
    assert [step for step, _ in one] == [step for step, _ in two]
    for (step, a), (_, b) in zip(one, two, strict=True):
        assert b == pytest.approx(a, rel=2e-3), f"step {step}: {a} on one process, {b} on two"
    assert one[-1][1] < one[0][1], "the curve moves"
    assert _job(acme, split)["trained_tokens"] == _job(acme, single)["trained_tokens"], "every rank's tokens, once"
    messages = _messages(acme, split)
    expected = "FSDP (sharded)" if parallelism == "fsdp" else "DDP"
    assert any(m.startswith(f"Training on 2 CPU processes with {expected}") for m in messages), messages
    _assert_reports_where_and_how_fast_each_rank_runs(acme, single, split, parallelism)
    assert sum(m.startswith("Loaded model") for m in messages) == 1, "only rank 0 tells"

    # The adapter is one ordinary PEFT folder, which loads as it is.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.config import get_settings
    from app.core.tables import Artifact

    adapter = db.query(Artifact).filter_by(job_id=split, kind="adapter").one()
    folder = get_settings().blobs_path / adapter.blob_key
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 8
    base = AutoModelForCausalLM.from_pretrained(get_settings().models_path / "tiny-llama")
    PeftModel.from_pretrained(base, folder)


def _assert_reports_where_and_how_fast_each_rank_runs(account, single: int, split: int, parallelism: str) -> None:
    """The job page's devices line and per-rank figures: the start event names the host and each
    rank's device; every train point has each rank's tokens/s and memory, and the busiest's."""
    (start,) = [
        e
        for e in account.client.get(f"/api/jobs/{split}/events", params={"limit": 1000}).json()
        if e["message"].startswith("Training on 2")
    ]
    where = start["data"]["placement"]
    assert where["hostname"] == platform.node() and where["world_size"] == 2
    assert where["parallelism"] == parallelism
    assert [name.split(":")[0] for name in where["devices"]] == ["CPU process 0", "CPU process 1"]

    points = account.client.get(f"/api/jobs/{split}/metrics", params={"split": "train"}).json()
    for point in points:
        values = point["values"]
        memory = [values["peak_memory_mb_rank0"], values["peak_memory_mb_rank1"]]
        assert min(memory) > 0 and values["peak_memory_mb_busiest"] == max(memory)
        assert values["tokens_per_second_rank0"] > 0 and values["tokens_per_second_rank1"] > 0
    last = points[-1]["values"]
    # Each rank trained on its own half of the tokens, in the same time: the two add up to the job's figure.
    both = last["tokens_per_second_rank0"] + last["tokens_per_second_rank1"]
    assert both == pytest.approx(last["tokens_per_second"], rel=0.25)
    one_process = account.client.get(f"/api/jobs/{single}/metrics", params={"split": "train"}).json()
    assert not any("tokens_per_second_rank0" in point["values"] for point in one_process), "one device: no ranks"


def test_cancel_stops_every_rank_within_a_step(acme, db, workers):
    worker = workers.start(devices=2)
    job_id = _launch(acme, db, workers, max_steps=5000, save_steps=5, batch_size=2, num_devices=2)
    wait_for(lambda: _job(acme, job_id)["step"] >= 3, timeout=240, message="training on two processes")
    assert len(_ranks_of(worker)) == 2
    cancel = acme.client.post(f"/api/jobs/{job_id}/cancel").json()
    job = wait_for(lambda: _finished(acme, job_id), timeout=120, message="the cancel")
    assert job["state"] == "cancelled"
    assert cancel["step"] <= job["step"] <= cancel["step"] + 1, "every rank stopped within a step"
    wait_for(lambda: not _ranks_of(worker), timeout=30, message="every rank to exit")
    checkpoints = acme.client.get(f"/api/jobs/{job_id}/checkpoints").json()
    assert checkpoints[-1]["step"] == job["step"], "the step it stopped at is saved whole"


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_a_rank_killed_mid_job_resumes_from_the_last_whole_checkpoint(acme, db, workers, parallelism):
    """FSDP too: its checkpoint holds the whole (gathered) weights, loaded back into the shards."""
    worker = workers.start(devices=2)
    job_id = _launch(
        acme, db, workers, max_steps=24, save_steps=4, batch_size=2, num_devices=2, parallelism=parallelism
    )
    wait_for(
        lambda: len(acme.client.get(f"/api/jobs/{job_id}/checkpoints").json()) >= 2,
        timeout=300,
        message="two checkpoints",
    )
    ranks = _ranks_of(worker)
    assert len(ranks) == 2
    os.kill(ranks[-1].pid, signal.SIGKILL)
    wait_for(lambda: not any(rank.is_running() for rank in ranks), timeout=60, message="the whole group to go")

    job = wait_for(lambda: _finished(acme, job_id), timeout=400, message="the resumed job to finish")
    assert job["state"] == "succeeded", job["error"]
    assert job["step"] == 24 and job["attempts"] == 2
    assert [step for step, _ in _losses(acme, job_id)] == list(range(1, 25)), "one continuous series"
    messages = _messages(acme, job_id)
    assert any("A training process was stopped by SIGKILL" in m or "A training process died" in m for m in messages)
    assert any(m.startswith("Resuming from the checkpoint at step") for m in messages)
