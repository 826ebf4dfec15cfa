"""A job on several devices: torchrun's elastic launch, one process per device, in a process
group of its own.

The worker's training job (`training_job.run_job`) calls `train_on_devices` instead of
`ml.train` when the spec asks for more than one device. It writes what the ranks need into the
job's output folder (`distributed/launch.json`: no secret; the ranks read the worker's settings
themselves), starts `python -m torch.distributed.run ... -m worker.distributed_job LAUNCH` in a
new session, and waits. Each rank joins the process group and runs the same `ml.train` as a
single-device job: the Trainer splits the data and the gradients (DDP) or the weights (FSDP,
through accelerate). Rank 0 reports to the database (`DatabaseReporter`) and writes the
outcome (`distributed/result.json`); the other ranks only hear the stop flag, and every rank
takes rank 0's stop decision at the same step (`ml.distributed.agree_to_stop`).

No orphans: torchrun and its ranks are one session, killed together (`killpg`) when anything
goes wrong here; each of them also dies with its parent (PR_SET_PDEATHSIG), so a worker killed
by SIGKILL takes its torchrun, and torchrun its ranks, with it. A rank that dies ends the whole
group (torchrun, `--max-restarts 0`), and the job goes back to the queue to resume from its
last whole checkpoint, as a single-device job does when its worker crashes.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from app.config import get_settings
from app.contract.spec import Method, Parallelism, TrainingSpec
from app.core.blobs import blob_store
from worker.database_reporter import DatabaseReporter, shutdown_requested
from worker.ml.reporting import Reporter
from worker.ml.result import TrainResult

log = logging.getLogger(__name__)

LAUNCH_FILE = "launch.json"
RESULT_FILE = "result.json"
STOP_FILE = "stop"  # present: every rank stops at its next step (the worker is shutting down)


class RankFailure(Exception):
    """A training process died (killed, crashed): the job resumes from its last whole checkpoint."""


@dataclass(frozen=True)
class Launch:
    """What every rank needs to run its part of the job (`launch.json`)."""

    job_id: int
    spec: dict
    train_file: str
    output_dir: str
    eval_file: str | None = None
    dataset_name: str | None = None
    start_from: str | None = None
    start_from_name: str | None = None
    run_name: str | None = None


def run_dir(output_dir: Path) -> Path:
    """Where the launch, the outcome and the stop flag of a distributed run live."""
    return Path(output_dir) / "distributed"


def resolve_parallelism(
    spec: TrainingSpec, *, device_memory_bytes: int | None, model_bytes: float | None
) -> Parallelism:
    """`auto` as the worker decides it: DDP when one device holds the model with its method
    (always on CPU, whose memory the processes share; always for QLoRA, which FSDP does not
    shard here), else FSDP full-shard."""
    if spec.parallelism != Parallelism.auto:
        return spec.parallelism
    if spec.method == Method.qlora or device_memory_bytes is None or model_bytes is None:
        return Parallelism.ddp
    return Parallelism.ddp if model_bytes <= 0.9 * device_memory_bytes else Parallelism.fsdp


def _single_device_estimate(spec: TrainingSpec) -> float | None:
    """The memory estimate of the job on one device (the app's estimate, from the model's config)."""
    from app.chat.catalog import find_model
    from app.jobs.memory_estimate import estimate_memory

    try:
        info = find_model(spec.base_model)
    except Exception:  # an unreadable model folder: take DDP, the default that needs no estimate
        log.exception("could not read the shape of %s", spec.base_model)
        return None
    single = spec.model_copy(update={"num_devices": 1, "parallelism": Parallelism.auto})
    return estimate_memory(info, single).total_bytes if info is not None else None


def _gpu_memory_bytes() -> int | None:
    from worker.devices import read_gpus

    gpus = read_gpus()
    return min(gpu.memory_total for gpu in gpus) if gpus else None


def placement(spec: TrainingSpec, parallelism: Parallelism) -> dict:
    """Where the ranks run, as the start event's data (the job page's devices line): the host,
    each rank's device by name (rank i on the i-th GPU this worker owns, as torchrun's LOCAL_RANK
    picks it, or on a CPU process), the world size and the parallelism."""
    from worker.devices import cpu_entry, gpu_entries, read_gpus

    gpus = gpu_entries(read_gpus())[: spec.num_devices]
    if gpus:
        devices = [f"GPU {gpu['index']}: {gpu['name']}" for gpu in gpus]
    else:
        cpu = cpu_entry()["name"]
        devices = [f"CPU process {rank}: {cpu}" for rank in range(spec.num_devices)]
    return {
        "hostname": platform.node() or "unknown host",
        "devices": devices,
        "world_size": spec.num_devices,
        "parallelism": parallelism.value,
    }


def train_on_devices(launch: Launch, reporter: Reporter) -> TrainResult:
    """Run the job on `spec.num_devices` processes and wait; the outcome rank 0 wrote. Raises the
    training error a rank reported (`ml.TrainingError`), or `RankFailure` when a rank died."""
    from worker import ml

    spec = TrainingSpec.model_validate(launch.spec)
    gpu_memory = _gpu_memory_bytes()
    parallelism = resolve_parallelism(
        spec,
        device_memory_bytes=gpu_memory,
        model_bytes=_single_device_estimate(spec) if gpu_memory else None,
    )
    spec = spec.model_copy(update={"parallelism": parallelism})
    folder = run_dir(Path(launch.output_dir))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_FILE, STOP_FILE):
        (folder / stale).unlink(missing_ok=True)
    launch_file = folder / LAUNCH_FILE
    launch_file.write_text(json.dumps({**asdict(launch), "spec": spec.model_dump(mode="json")}))
    where = placement(spec, parallelism)
    reporter.event(
        f"Training on {spec.num_devices} {'GPUs' if gpu_memory else 'CPU processes'} with "
        f"{'FSDP (sharded)' if parallelism == Parallelism.fsdp else 'DDP'}, one process each (torchrun), "
        f"on {where['hostname']}",
        num_devices=spec.num_devices,
        parallelism=parallelism.value,
        placement=where,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={spec.num_devices}",
        "--max-restarts=0",
        "--monitor-interval=0.5",
        "-m",
        "worker.distributed_job",
        str(launch_file),
    ]
    # The machine's cores shared out between the ranks, as torchrun would do (it sets 1).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // spec.num_devices))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    # preexec_fn only makes one system call (no lock, no import): safe beside the reporter's threads.
    process = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509
    try:
        while process.poll() is None:
            if shutdown_requested.is_set() and not (folder / STOP_FILE).exists():
                (folder / STOP_FILE).touch()  # a warm shutdown: every rank stops at its next step
            time.sleep(0.2)
    finally:
        _kill_group(process)
    outcome_file = folder / RESULT_FILE
    outcome = json.loads(outcome_file.read_text()) if outcome_file.exists() else None
    if outcome is not None and "error" in outcome:
        error_class = getattr(ml, outcome["error_type"], ml.TrainingError)
        raise error_class(outcome["error"])
    if process.returncode != 0 or outcome is None:
        raise RankFailure(_why_it_ended(process.returncode))
    return _result_from_json(outcome["result"])


def _why_it_ended(returncode: int) -> str:
    if returncode < 0:
        return f"A training process was stopped by {signal.Signals(-returncode).name}"
    return f"A training process died (torchrun exited with {returncode})"


def _prctl():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: no parent-death signal
        return None


_PR_SET_PDEATHSIG = 1
_prctl_call = _prctl()


def die_with_parent() -> None:
    """SIGKILL this process when the process that started it dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG, kept across exec): a rank never outlives its torchrun, nor torchrun the
    worker. Called in the child before torchrun starts, and by every rank."""
    if _prctl_call is not None:
        _prctl_call(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(process: subprocess.Popen) -> None:
    """torchrun and every rank, whatever state they are in (a no-op once all have exited)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _result_from_json(data: dict) -> TrainResult:
    paths = ("output_dir", "final_dir", "merged_dir", "checkpoint_dir")
    return TrainResult(**{key: Path(value) if key in paths and value else value for key, value in data.items()})


class StopFlagReporter:
    """The reporter of ranks other than 0: reports nothing, hears only the stop file (rank 0
    hears the cancel flag, and its decision reaches every rank at the same step)."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file

    def log(self, metrics, step):
        pass

    def event(self, message, level="info", **data):
        pass

    def progress(self, step, total_steps, epoch=None):
        pass

    def flush(self):
        pass

    def checkpoint(self, step, path):
        pass

    def should_stop(self) -> bool:
        return self.stop_file.exists()


class _StopFileToo:
    """Rank 0's database reporter, which also stops on the stop file (the worker shutting down
    sets an event in its own process only)."""

    def __init__(self, reporter: DatabaseReporter, stop_file: Path) -> None:
        self._reporter = reporter
        self._stop_file = stop_file

    def __getattr__(self, name):
        return getattr(self._reporter, name)

    def should_stop(self) -> bool:
        return self._stop_file.exists() or self._reporter.should_stop()


def run_rank(launch_file: Path) -> int:
    """One rank (`python -m worker.distributed_job LAUNCH` under torchrun). The exit status."""
    from worker import ml
    from worker.ml import distributed

    die_with_parent()
    launch = Launch(**json.loads(launch_file.read_text()))
    spec = TrainingSpec.model_validate(launch.spec)
    if spec.method != Method.qlora:
        from worker.training_job import keep_bitsandbytes_unloaded

        keep_bitsandbytes_unloaded()  # this process trains one job, without 4-bit layers
    folder = launch_file.parent
    settings = get_settings()
    distributed.start_process_group()
    main = distributed.is_main_process()
    reporter = (
        _StopFileToo(DatabaseReporter(launch.job_id, blob_store()).start(), folder / STOP_FILE)
        if main
        else StopFlagReporter(folder / STOP_FILE)
    )
    outcome: dict = {}
    try:
        result = ml.train(
            spec,
            train_file=Path(launch.train_file),
            eval_file=Path(launch.eval_file) if launch.eval_file else None,
            reporter=reporter,
            output_dir=Path(launch.output_dir),
            models_dir=settings.models_path,
            dataset_name=launch.dataset_name,
            start_from=Path(launch.start_from) if launch.start_from else None,
            start_from_name=launch.start_from_name,
            trackers=ml.TrackerSettings(
                run_name=launch.run_name,
                wandb_api_key=settings.wandb_api_key.get_secret_value() if settings.wandb_api_key else None,
                wandb_base_url=settings.wandb_base_url,
                mlflow_tracking_uri=settings.mlflow_tracking_uri,
            ),
        )
        outcome = {
            "result": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(result).items()}
        }
    except ml.TrainingError as error:  # the job's fault (its data, its settings): it fails, not retried
        outcome = {"error": str(error), "error_type": type(error).__name__}
    finally:
        if main:
            reporter.close()
    if main or "error" in outcome:
        staging = folder / f".{RESULT_FILE}.{distributed.rank()}"
        staging.write_text(json.dumps(outcome))
        staging.replace(folder / RESULT_FILE)
    distributed.end_process_group()
    return 1 if "error" in outcome else 0  # torchrun then ends the other ranks, wherever they wait


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_rank(Path(sys.argv[1])))
