"""An upload that fills the server's disk: a clear 507, and nothing of it left behind."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import chat_rows, forget_cached_settings, jsonl


@pytest.fixture
def small_data_dir(settings_env, monkeypatch, tmp_path):
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)], check=True)
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(mount_point))
    forget_cached_settings()
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_an_upload_that_fills_the_disk_answers_507_and_leaves_nothing(small_data_dir, make_account):
    member = make_account()
    big = jsonl(chat_rows(20_000))  # about 2 MB, four times the disk
    response = member.client.post("/api/datasets", files={"file": ("big.jsonl", big)})
    assert response.status_code == 507 and "disk is full" in response.json()["detail"]
    assert member.client.get("/api/datasets").json() == []
    assert not [p for p in (small_data_dir / "blobs").rglob("*") if p.is_file()], "the staged part is removed"
    small = member.client.post("/api/datasets", files={"file": ("small.jsonl", jsonl(chat_rows(6)))})
    assert small.status_code == 201, "once the space is back, uploads work again"
