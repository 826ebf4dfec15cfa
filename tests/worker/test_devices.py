"""What a worker says it computes on: NVML readings in the stored shape, the GPUs that
CUDA_VISIBLE_DEVICES leaves it, and, on a machine without NVIDIA's library or GPU, its CPU."""

from __future__ import annotations

import os

import pytest

from worker.devices import GpuReading, cpu_entry, gpu_entries, read_devices, read_gpus, visible_indices

GIB = 1024**3
UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000"]


def _cuda_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_nvml_readings_become_what_the_heartbeat_stores():
    readings = [
        GpuReading(0, b"NVIDIA H100 80GB HBM3", b"GPU-aaaa1111-0000", 3 * GIB, 80 * GIB, 37),
        # A MIG slice reports no utilisation; a driver glitch may report used > total.
        GpuReading(1, "NVIDIA A100-SXM4-40GB", "GPU-bbbb2222-0000", 50 * GIB, 40 * GIB, None),
    ]
    assert gpu_entries(readings) == [
        {
            "kind": "gpu",
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-aaaa1111-0000",
            "memory_used_bytes": 3 * GIB,
            "memory_total_bytes": 80 * GIB,
            "utilization_percent": 37,
        },
        {
            "kind": "gpu",
            "index": 1,
            "name": "NVIDIA A100-SXM4-40GB",
            "uuid": "GPU-bbbb2222-0000",
            "memory_used_bytes": 40 * GIB,
            "memory_total_bytes": 40 * GIB,
            "utilization_percent": None,
        },
    ]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [0, 1, 2]),  # unset: every GPU
        ("1", [1]),  # what `tunelab worker` sets for its second process
        ("2,0", [2, 0]),  # CUDA's order, not NVML's
        ("GPU-cccc", [2]),  # a UUID prefix
        ("", []),  # hidden
        ("-1", []),
        ("0,7,1", [0]),  # like CUDA, the list stops at the first device that does not exist
    ],
)
def test_cuda_visible_devices_leaves_a_worker_the_gpus_cuda_would(visible, expected):
    assert visible_indices(visible, UUIDS) == expected


@pytest.mark.skipif(_cuda_present(), reason="this machine has a GPU: the CPU path is for machines without one")
def test_without_nvidia_library_or_gpu_a_worker_reports_its_cpu_and_no_fake_gpu():
    assert read_gpus() == []
    (device,) = read_devices()
    assert device["kind"] == "cpu" and device["cores"] == os.cpu_count()
    assert device["name"] == cpu_entry()["name"]
    assert device["name"] and "gpu" not in device["name"].lower()
    assert 0 < device["memory_used_bytes"] < device["memory_total_bytes"]


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_present(), reason="needs a CUDA device")
def test_on_a_gpu_machine_nvml_reports_each_visible_gpu_with_its_memory():
    import torch

    devices = read_devices()
    assert [device["kind"] for device in devices] == ["gpu"] * torch.cuda.device_count()
    for device in devices:
        assert device["memory_total_bytes"] > 1 * GIB
        assert 0 <= device["memory_used_bytes"] <= device["memory_total_bytes"]
    assert {device["name"] for device in devices} == {
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    }
