"""What a worker computes on, as its heartbeat reports it: its GPUs through NVIDIA's management
library (NVML, the `nvidia-ml-py` package, imported as `pynvml`), or else its CPU.

    read_devices()  # [{"kind": "gpu", "index": 0, "name": "NVIDIA H100 80GB HBM3", ...}] or [{"kind": "cpu", ...}]

NVML sees every GPU of the machine, whatever CUDA_VISIBLE_DEVICES says; `visible_indices`
picks the ones this process may use, as CUDA would (indices in NVML's PCI bus order, which
`tunelab worker` makes CUDA's too with CUDA_DEVICE_ORDER=PCI_BUS_ID). The reading (`read_gpus`) and the stored
shape (`gpu_entries`, `cpu_entry`) are apart, so the shape is tested without a GPU. No torch here:
the heartbeat runs in the worker's main process, which never loads the ML stack.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GPU = "gpu"
CPU = "cpu"


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML reports it (bytes for memory, percent for utilisation)."""

    index: int
    name: str | bytes
    uuid: str | bytes
    memory_used: int
    memory_total: int
    utilization: int | None  # None where the device does not report it (e.g. a MIG slice)


def _text(value: str | bytes) -> str:
    # Older NVML bindings return bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def gpu_entries(readings: list[GpuReading]) -> list[dict]:
    """NVML readings in the shape the `workers.devices` column stores."""
    entries = []
    for reading in readings:
        total = max(0, int(reading.memory_total))
        utilization = reading.utilization
        entries.append(
            {
                "kind": GPU,
                "index": reading.index,
                "name": _text(reading.name).strip()[:200] or "unknown GPU",
                "uuid": _text(reading.uuid).strip()[:100],
                "memory_used_bytes": min(max(0, int(reading.memory_used)), total),
                "memory_total_bytes": total,
                "utilization_percent": None if utilization is None else min(max(0, int(utilization)), 100),
            }
        )
    return entries


def visible_indices(cuda_visible_devices: str | None, uuids: list[str]) -> list[int]:
    """The NVML indices of the GPUs a process with this CUDA_VISIBLE_DEVICES sees, in its
    order: unset means all; entries are indices or (prefixes of) UUIDs; like CUDA, the list
    ends at the first entry that names no device ("" or "-1" hide every GPU)."""
    if cuda_visible_devices is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (part.strip() for part in cuda_visible_devices.split(",")):
        if entry.isdigit() and int(entry) < len(uuids):
            index = int(entry)
        else:
            matches = [i for i, uuid in enumerate(uuids) if entry.startswith("GPU-") and uuid.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in chosen:
            break
        chosen.append(index)
    return chosen


def read_gpus() -> list[GpuReading]:
    """This process's GPUs through NVML; [] when the library, its driver or a device is missing."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:  # no driver, no library: a CPU machine
        log.debug("NVML unavailable: %s", error)
        return []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(handle)) for handle in handles]
        readings = []
        for index in visible_indices(os.environ.get("CUDA_VISIBLE_DEVICES"), uuids):
            handle = handles[index]
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            except pynvml.NVMLError:
                utilization = None
            name = pynvml.nvmlDeviceGetName(handle)
            readings.append(GpuReading(index, name, uuids[index], memory.used, memory.total, utilization))
        return readings
    except pynvml.NVMLError as error:
        log.warning("could not read the GPUs through NVML: %s", error)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes ({} where there is none)."""
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def cpu_entry(processes: int = 1) -> dict:
    """The machine's CPU and memory, for a worker without a GPU: what it really runs on, and the
    training processes (CPU "devices") it runs a job on."""
    memory = _meminfo()
    total = memory.get("MemTotal")
    available = memory.get("MemAvailable")
    return {
        "kind": CPU,
        "name": _cpu_name()[:200],
        "cores": os.cpu_count() or 1,
        "processes": processes,
        "memory_used_bytes": total - available if total is not None and available is not None else None,
        "memory_total_bytes": total,
        "utilization_percent": None,
    }


def read_devices() -> list[dict]:
    """The GPUs this worker process sees, or its CPU (with its training processes) when it sees none."""
    from app.config import get_settings

    return gpu_entries(read_gpus()) or [cpu_entry(get_settings().worker_cpu_processes)]
