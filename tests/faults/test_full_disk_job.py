"""A job whose worker's disk fills while it checkpoints: the job goes back to the queue to
resume from its last whole checkpoint, as a crash counts, and fails with the reason once its
attempts are spent. The disk is a real, small tmpfs the test mounts (tests run as root)."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import chat_rows, forget_cached_settings, jsonl, tiny_spec, wait_for


@pytest.fixture
def small_disk(models_env, redis_broker, monkeypatch, tmp_path):
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(mount_point)], check=True)
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(mount_point))
    monkeypatch.setenv("TUNELAB_JOB_MAX_ATTEMPTS", "2")
    forget_cached_settings()
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_sends_the_job_back_to_resume_then_fails_it_with_the_reason(small_disk, make_account, workers):
    member = make_account()
    dataset = member.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(48)))}).json()
    workers.start()
    body = {"spec": tiny_spec(max_steps=12, save_steps=3), "dataset_id": dataset["id"], "queue": workers.queue}
    job_id = member.client.post("/api/jobs", json=body).json()["id"]
    job = wait_for(
        lambda: (j := member.client.get(f"/api/jobs/{job_id}").json())["state"] in ("succeeded", "failed") and j,
        timeout=240,
        message="the job to end",
    )
    assert job["state"] == "failed" and job["error"].startswith("Disk full on "), job["error"]
    assert job["attempts"] == 2, "it was tried again after the first full disk"
    events = [e["message"] for e in member.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()]
    assert any("The job goes back to the queue (retry 1 of 1)" in message for message in events)
    assert any(message.startswith("Resuming from the checkpoint at step 3") for message in events)
    assert [c["step"] for c in member.client.get(f"/api/jobs/{job_id}/checkpoints").json()] == [3]
