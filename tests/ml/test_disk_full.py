"""A disk that fills while a checkpoint is written: a DiskFullError that says where and how
much is free, no half-written checkpoint left, and the last whole one still there to resume
from. The disk is a real, small tmpfs the test mounts (the tests run as root, as CI does)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from worker.ml import DiskFullError, MemoryReporter, train
from worker.ml.callbacks import checkpoints


@pytest.fixture
def small_disk(tmp_path) -> Path:
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_while_checkpointing_keeps_the_last_whole_checkpoint(
    make_spec, colour_file, models_dir, small_disk
):
    spec = make_spec(max_steps=12, save_steps=3, keep_checkpoints=10)
    reporter = MemoryReporter()
    with pytest.raises(DiskFullError) as full:
        train(spec, train_file=colour_file, output_dir=small_disk / "run", reporter=reporter, models_dir=models_dir)
    message = str(full.value)
    assert message.startswith("Disk full on ") and "bytes free in" in message
    whole = checkpoints(small_disk / "run" / "checkpoints")
    assert whole, "the checkpoints written before the disk filled are kept"
    assert f"resume from its checkpoint at step {whole[-1].name.removeprefix('step-')}" in message
    leftovers = [p.name for p in (small_disk / "run" / "checkpoints").iterdir() if p.name.startswith("checkpoint-")]
    assert leftovers == [], "no half-written checkpoint is left for a resume to trip over"
