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

Several machines (`spec.num_nodes > 1`): the worker that took the job (the leader) starts its
torchrun as the host of a c10d rendezvous (its address, a free port of `rendezvous_ports`, the id
`job-<id>-attempt-<n>`), then asks `num_nodes - 1` more workers of the queue to join
(`app.core.queue.enqueue_gang_join`). A worker that takes such a message (a follower,
`join_gang`) starts its own torchrun on the same rendezvous and the same launch file (the job's
output folder is shared storage), and only runs its ranks: the leader alone records the job's
outcome. When the gang is not whole within `gang_timeout_s`, the leader ends its torchrun and
raises `GangNotFormed`: the job goes back to the queue, saying why.

No orphans: torchrun and its ranks are one session, killed together (`killpg`) when anything
goes wrong here; each of them also dies with its parent (PR_SET_PDEATHSIG), so a worker killed
by SIGKILL takes its torchrun, and torchrun its ranks, with it. A rank that dies ends the whole
group (torchrun, `--max-restarts 0`), and the job goes back to the queue to resume from its
last whole checkpoint, as a single-device job does when its worker crashes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


NODE_FILE = "node-{}.json"  # in a gang's folder: written by each node's first rank once the gang formed
JOINED_FILE = "joined-{}.json"  # in a gang's folder: a follower took the join message

# A node's ranks write their node file right after the rendezvous: the leader waits this much
# longer than the gang timeout for it (its torchrun, whose join timeout is the gang timeout, ends too).
GANG_GRACE_S = 10.0


class RankFailure(Exception):
    """A training process died (killed, crashed): the job resumes from its last whole checkpoint."""


class GangNotFormed(Exception):
    """A multi-node job's workers did not all meet in time: the job goes back to the queue (not a
    crash: it waits for enough free workers)."""


class GangStopped(Exception):
    """A multi-node job was cancelled, paused or taken back while its gang was forming."""


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node job meet: what a join message carries (JSON)."""

    job_id: int
    attempt: int
    endpoint: str  # HOST:PORT of the leader's c10d store
    run_id: str  # job-<id>-attempt-<n>: torchrun's rendezvous id
    num_nodes: int
    num_devices: int  # per node
    launch_file: str  # on the storage every worker sees
    deadline: float  # Unix time: a gang not formed by then is given up

    @property
    def gang_dir(self) -> Path:
        return Path(self.launch_file).parent / self.run_id


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


def node_devices(spec: TrainingSpec) -> list[str]:
    """This machine's devices the job's ranks here run on, by local rank (torchrun's LOCAL_RANK
    picks the i-th GPU this worker owns), or its CPU processes."""
    from worker.devices import cpu_entry, gpu_entries, read_gpus

    gpus = gpu_entries(read_gpus())[: spec.num_devices]
    if gpus:
        return [f"GPU {gpu['index']}: {gpu['name']}" for gpu in gpus]
    cpu = cpu_entry()["name"]
    return [f"CPU process {rank}: {cpu}" for rank in range(spec.num_devices)]


def gang_placement(spec: TrainingSpec, parallelism: Parallelism, nodes: list[dict]) -> dict:
    """`placement` of a multi-node job: every node (host and devices) by node rank, and each global
    rank's device, named with its host (rank = node rank x devices per node + local rank)."""
    return {
        "hostname": ", ".join(node["hostname"] for node in nodes),
        "devices": [f"{node['hostname']} · {device}" for node in nodes for device in node["devices"]],
        "nodes": nodes,
        "world_size": spec.world_size,
        "parallelism": parallelism.value,
    }


def placement(spec: TrainingSpec, parallelism: Parallelism) -> dict:
    """Where the ranks run, as the start event's data (the job page's devices line): the host,
    each rank's device by name (rank i on the i-th GPU this worker owns, as torchrun's LOCAL_RANK
    picks it, or on a CPU process), the world size and the parallelism."""
    return {
        "hostname": platform.node() or "unknown host",
        "devices": node_devices(spec),
        "world_size": spec.num_devices,
        "parallelism": parallelism.value,
    }


def train_on_devices(
    launch: Launch,
    reporter: Reporter,
    *,
    attempt: int = 1,
    invite: Callable[[Rendezvous], None] | None = None,
) -> TrainResult:
    """Run the job on `spec.num_devices` processes and wait; the outcome rank 0 wrote. Raises the
    training error a rank reported (`ml.TrainingError`), or `RankFailure` when a rank died.

    A multi-node job (`spec.num_nodes > 1`): this worker leads its gang. It hosts the rendezvous,
    calls `invite` once for each other node it needs, and raises `GangNotFormed` when they have not
    all joined within `gang_timeout_s` (`GangStopped` when the job is cancelled meanwhile)."""
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
    devices = _counted_devices(spec.num_devices, gpus=bool(gpu_memory))
    how = "FSDP (sharded)" if parallelism == Parallelism.fsdp else "DDP"
    rendezvous = None
    if spec.multi_node:
        rendezvous = _new_rendezvous(launch, spec, attempt, launch_file)
        rendezvous.gang_dir.mkdir(parents=True, exist_ok=True)
        reporter.event(
            f"Forming a gang of {spec.num_nodes} workers with {devices} each, meeting at {rendezvous.endpoint} "
            f"(torchrun rendezvous {rendezvous.run_id})",
            num_nodes=spec.num_nodes,
            num_devices=spec.num_devices,
            rendezvous=rendezvous.endpoint,
        )
    else:
        where = placement(spec, parallelism)
        reporter.event(
            f"Training on {devices} with {how}, one process each (torchrun), on {where['hostname']}",
            num_devices=spec.num_devices,
            parallelism=parallelism.value,
            placement=where,
        )
    command = torchrun_command(spec, launch_file, rendezvous, host=True)
    # preexec_fn only makes one system call (no lock, no import): safe beside the reporter's threads.
    process = subprocess.Popen(command, env=_rank_env(spec), start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509
    try:
        if rendezvous is not None:
            if invite is None:
                raise ValueError("a multi-node job's leader needs a way to invite the other nodes")
            for _node in range(spec.num_nodes - 1):
                invite(rendezvous)
            nodes = _wait_for_gang(process, rendezvous, reporter, devices=devices)
            where = gang_placement(spec, parallelism, nodes)
            reporter.event(
                f"Training on {spec.num_nodes} nodes x {devices} with {how}, one process each (torchrun), "
                f"on {where['hostname']}",
                num_devices=spec.num_devices,
                num_nodes=spec.num_nodes,
                parallelism=parallelism.value,
                placement=where,
            )
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


def _counted_devices(count: int, *, gpus: bool) -> str:
    if gpus:
        return f"{count} GPU{'s' if count != 1 else ''}"
    return f"{count} CPU process{'es' if count != 1 else ''}"


def _rank_env(spec: TrainingSpec) -> dict[str, str]:
    # The machine's cores shared out between this node's ranks, as torchrun would do (it sets 1).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // spec.num_devices))
    return {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}


def torchrun_command(
    spec: TrainingSpec, launch_file: Path, rendezvous: Rendezvous | None = None, *, host: bool = False
) -> list[str]:
    """torchrun for this node's ranks: a standalone run on one machine; for a node of a gang, the
    gang's c10d rendezvous, hosted by the leader (`host`), which every node waits at for as long as
    the gang may take to form (`join_timeout`)."""
    if rendezvous is None:
        where = ["--standalone", f"--nproc-per-node={spec.num_devices}"]
    else:
        wait = max(1, round(rendezvous.deadline - time.time()))
        local_address = get_settings().rendezvous_host
        where = [
            f"--nnodes={rendezvous.num_nodes}",
            f"--nproc-per-node={rendezvous.num_devices}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous.endpoint}",
            f"--rdzv-id={rendezvous.run_id}",
            f"--rdzv-conf=is_host={'true' if host else 'false'},join_timeout={wait}",
            *([f"--local-addr={local_address}"] if local_address else []),
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        "--max-restarts=0",
        "--monitor-interval=0.5",
        "-m",
        "worker.distributed_job",
        str(launch_file),
    ]


def free_port(ports: range) -> int | None:
    """A port of `ports` nothing listens on now (tried in a random order, so that two leaders on
    one host rarely pick the same one), or None."""
    candidates = list(ports)
    random.shuffle(candidates)
    for port in candidates:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return port
    return None


def _new_rendezvous(launch: Launch, spec: TrainingSpec, attempt: int, launch_file: Path) -> Rendezvous:
    settings = get_settings()
    port = free_port(settings.rendezvous_port_range)
    if port is None:
        raise GangNotFormed(
            f"The gang could not form: no free port in TUNELAB_RENDEZVOUS_PORTS ({settings.rendezvous_ports}) on this worker"
        )
    return Rendezvous(
        job_id=launch.job_id,
        attempt=attempt,
        endpoint=f"{settings.rendezvous_host or socket.getfqdn()}:{port}",
        run_id=f"job-{launch.job_id}-attempt-{attempt}",
        num_nodes=spec.num_nodes,
        num_devices=spec.num_devices,
        launch_file=str(launch_file),
        deadline=time.time() + settings.gang_timeout_s,
    )


def _node_files(gang_dir: Path) -> list[Path]:
    return sorted(gang_dir.glob(NODE_FILE.format("*")), key=lambda path: int(path.stem.split("-")[1]))


def _wait_for_gang(
    process: subprocess.Popen, rendezvous: Rendezvous, reporter: Reporter, *, devices: str
) -> list[dict]:
    """Wait until every node has joined (the ranks started: each node's first rank writes its node
    file); the nodes by node rank. Raises `GangNotFormed` when the time is up or torchrun gave up,
    `GangStopped` when the job is no longer to run (cancelled, paused, taken back)."""
    timeout = get_settings().gang_timeout_s
    last_look = 0.0
    while not _node_files(rendezvous.gang_dir):
        if process.poll() is not None or time.time() > rendezvous.deadline + GANG_GRACE_S:
            joined = 1 + len(list(rendezvous.gang_dir.glob(JOINED_FILE.format("*"))))
            if joined >= rendezvous.num_nodes and process.returncode not in (None, 0):
                reason = (
                    f"every worker joined, but torchrun here ended with {process.returncode} (see the worker's log)"
                )
            else:
                reason = f"only {joined} of {rendezvous.num_nodes} workers joined within {timeout:g} s"
            raise GangNotFormed(
                f"The gang did not form: {reason}; each of them needs {devices} free, on this job's queue"
            )
        if time.monotonic() - last_look >= 1.0:
            last_look = time.monotonic()
            if reporter.should_stop():
                raise GangStopped("The job stopped while its gang was forming")
        time.sleep(0.2)
    # Every node's first rank writes its file as it starts, right after the rendezvous.
    settle = time.monotonic() + 30
    while len(found := _node_files(rendezvous.gang_dir)) < rendezvous.num_nodes and time.monotonic() < settle:
        if process.poll() is not None:
            break
        time.sleep(0.2)
    return [json.loads(path.read_text()) for path in found]


def join_gang(rendezvous: Rendezvous, *, still_wanted: Callable[[], bool]) -> int | None:
    """Be one node of a multi-node job that another worker leads: start torchrun for this node's
    ranks on the gang's rendezvous and the job's launch file, and wait until they end, or until
    `still_wanted` (asked every few seconds) says the job has moved on. Changes nothing of the job:
    its leader records the outcome. torchrun's exit status, or None when this worker came too late."""
    launch_file = Path(rendezvous.launch_file)
    if time.time() >= rendezvous.deadline:
        log.info("job %s: gang %s gave up already; not joining", rendezvous.job_id, rendezvous.run_id)
        return None
    if not launch_file.is_file():
        log.error(
            "job %s: %s is not here: every worker of a multi-node job must see the same blob store "
            "(TUNELAB_DATA_DIR on shared storage)",
            rendezvous.job_id,
            launch_file,
        )
        return None
    spec = TrainingSpec.model_validate(json.loads(launch_file.read_text())["spec"])
    folder = launch_file.parent
    rendezvous.gang_dir.mkdir(parents=True, exist_ok=True)
    _write_json(
        rendezvous.gang_dir / JOINED_FILE.format(f"{socket.gethostname()}-{os.getpid()}"),
        {"hostname": platform.node() or "unknown host", "pid": os.getpid()},
    )
    command = torchrun_command(spec, launch_file, rendezvous, host=False)
    process = subprocess.Popen(command, env=_rank_env(spec), start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509
    try:
        last_look = time.monotonic()
        while process.poll() is None:
            if shutdown_requested.is_set() and not (folder / STOP_FILE).exists():
                (folder / STOP_FILE).touch()  # a warm shutdown: every rank, on every node, stops at its next step
            if time.monotonic() - last_look >= 2.0:
                last_look = time.monotonic()
                if not still_wanted():
                    log.info(
                        "job %s: attempt %s is over; ending this node's ranks", rendezvous.job_id, rendezvous.attempt
                    )
                    break
            time.sleep(0.2)
    finally:
        _kill_group(process)
    return process.returncode


def _write_json(path: Path, data: dict) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(data))
    staging.replace(path)


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
    if spec.multi_node and os.environ.get("LOCAL_RANK") == "0":
        # The gang formed (torchrun starts the ranks after the rendezvous): say where this node is.
        gang_dir = folder / os.environ["TORCHELASTIC_RUN_ID"]
        gang_dir.mkdir(parents=True, exist_ok=True)
        node = {"hostname": platform.node() or "unknown host", "devices": node_devices(spec)}
        _write_json(gang_dir / NODE_FILE.format(os.environ.get("GROUP_RANK", "0")), node)
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
