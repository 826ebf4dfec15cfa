"""Experiment trackers: the Trainer's own integrations (TensorBoard, Weights & Biases, MLflow),
configured from the job's `integrations` and the worker's settings.

TensorBoard event files are always written, into `tracking/tensorboard` of the job's output
folder; a W&B run, online or offline, keeps its files in `tracking/wandb`. The worker keeps that
folder among the job's artifacts.

The callbacks are transformers' `TensorBoardCallback`, `WandbCallback` and `MLflowCallback`,
configured as their documentation says, through environment variables (set while the run
trains, then put back). Each is wrapped so that a tracker that fails (a server gone, a package
missing) costs only itself: a warning event says so, and training goes on. `report_to` stays
"none" so that the Trainer does not add unwrapped copies of them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from transformers import TrainerCallback
from transformers.integrations import MLflowCallback

from app.contract.spec import MlflowSettings, TrainingSpec, WandbSettings

from .reporting import Reporter

TRACKING_DIR = "tracking"  # in the job's output folder: tensorboard/ and wandb/

# The Trainer events a tracker callback may answer; every one of them goes through the guard.
_EVENTS = tuple(name for name in vars(TrainerCallback) if name.startswith("on_"))


@dataclass(frozen=True)
class TrackerSettings:
    """What the worker decides, not the job: the run's name, and where its secrets and servers are."""

    run_name: str | None = None
    wandb_api_key: str | None = field(default=None, repr=False)
    wandb_base_url: str = "https://api.wandb.ai"
    mlflow_tracking_uri: str | None = None
    reach_timeout_s: float = 5.0


def tracking_dir(output_dir: Path) -> Path:
    return Path(output_dir) / TRACKING_DIR


_GUARDED: dict[type, type] = {}


class GuardedTracker(TrainerCallback):
    """One tracker callback whose failures are its own: the first exception it raises becomes a
    warning event, and it is silent from then on."""

    def __new__(cls, inner: TrainerCallback, name: str, reporter: Reporter):
        # A class of its own per tracker: the Trainer warns about two callbacks of one class.
        own = _GUARDED.get(type(inner))
        if own is None:
            own = _GUARDED[type(inner)] = type(f"Guarded{type(inner).__name__}", (cls,), {})
        return super().__new__(own)

    def __init__(self, inner: TrainerCallback, name: str, reporter: Reporter):
        self.inner = inner
        self.name = name
        self.reporter = reporter
        self.failed = False

    def fail(self, error: BaseException) -> None:
        self.failed = True
        self.reporter.event(
            f"{self.name} stopped logging ({type(error).__name__}: {_short(error)}); training goes on without it",
            level="warning",
            tracker=self.name,
        )


def _guarded(event: str):
    def call(self: GuardedTracker, args, state, control, **kwargs):
        if self.failed:
            return None
        try:
            return getattr(self.inner, event)(args, state, control, **kwargs)
        except Exception as error:  # noqa: BLE001 - a tracker must never fail the job
            self.fail(error)
            return None

    call.__name__ = event
    return call


for _event in _EVENTS:
    setattr(GuardedTracker, _event, _guarded(_event))


MLFLOW_RUN_FILE = "mlflow-run-id"  # in the tracking folder: the run a resumed attempt goes on with
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ResumableMLflowCallback(MLflowCallback):
    """transformers' MLflowCallback, remembering its run in the tracking folder so that the job
    resumed from a checkpoint (a pause, a crash) logs on into the same run (MLFLOW_RUN_ID)."""

    def __init__(self, run_file: Path):
        super().__init__()
        self.run_file = run_file

    def setup(self, args, state, model):
        super().setup(args, state, model)
        if state.is_world_process_zero and self._ml_flow.active_run() is not None:
            self.run_file.write_text(self._ml_flow.active_run().info.run_id)


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Environment variables the trackers read, and set for themselves (mlflow its URI and
# experiment id, wandb its service's socket): all of them are put back after the run.
_TRACKER_PREFIXES = ("WANDB_", "MLFLOW_", "TENSORBOARD_")


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set these environment variables for the block; afterwards the trackers' variables are as
    they were before it, whatever the trackers set meanwhile."""
    saved = {key: value for key, value in os.environ.items() if key.startswith(_TRACKER_PREFIXES) or key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key in [key for key in os.environ if key.startswith(_TRACKER_PREFIXES) or key in values]:
            if key not in saved:
                del os.environ[key]
        os.environ.update(saved)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _reachable(url: str, timeout_s: float) -> str | None:
    """None when `url` answers at all (any HTTP status), else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as error:
        return _short(getattr(error, "reason", error))


@dataclass
class Trackers:
    """The tracker callbacks of one run, and what to tidy when it ends."""

    callbacks: list[GuardedTracker] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    run_name: str | None = None
    mlflow_uri: str | None = None


def _tensorboard(directory: Path, reporter: Reporter, trackers: Trackers) -> None:
    try:
        from transformers.integrations import TensorBoardCallback

        callback = TensorBoardCallback()
    except (ImportError, RuntimeError) as error:
        reporter.event(
            f"TensorBoard event files are not written: {_short(error)} (install tensorboard on the worker)",
            level="warning",
        )
        return
    directory.mkdir(parents=True, exist_ok=True)
    callback.logging_dir = str(directory)  # what TENSORBOARD_LOGGING_DIR sets, read at construction
    trackers.callbacks.append(GuardedTracker(callback, "TensorBoard", reporter))


def _wandb(wanted: WandbSettings, settings: TrackerSettings, directory: Path, reporter: Reporter, trackers: Trackers):
    if not _installed("wandb"):
        reporter.event(
            "Weights & Biases is not installed on this worker (pip install 'tunelab[trackers]'); "
            "training goes on without it",
            level="warning",
            tracker="W&B",
        )
        return
    from transformers.integrations import WandbCallback

    why_offline = "no W&B API key is configured on this worker" if not settings.wandb_api_key else None
    if why_offline is None and (unreachable := _reachable(settings.wandb_base_url, settings.reach_timeout_s)):
        why_offline = f"{settings.wandb_base_url} is unreachable ({unreachable})"
    # Offline, the run's files are the run: they go with the job's tracking files. Online, W&B
    # holds the run, and its local files (logs written while a key was set) stay off the downloads.
    if not why_offline:
        directory = directory.parent / ".wandb-online"
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        "WANDB_PROJECT": wanted.project,
        "WANDB_DIR": str(directory),
        "WANDB_DISABLE_CODE": "true",  # the worker's code and git state are not the job's to publish
        "WANDB_DISABLE_GIT": "true",
        "WANDB_MODE": "offline" if why_offline else "online",
        "WANDB_BASE_URL": settings.wandb_base_url,
        "WANDB_SILENT": "true",
        "WANDB_LOG_MODEL": "false",
        "WANDB_WATCH": "false",
    }
    if wanted.entity:
        env["WANDB_ENTITY"] = wanted.entity
    if wanted.tags:
        env["WANDB_TAGS"] = ",".join(wanted.tags)
    if not why_offline:
        env["WANDB_API_KEY"] = settings.wandb_api_key
    trackers.environment.update(env)
    trackers.run_name = wanted.name or trackers.run_name
    trackers.callbacks.append(GuardedTracker(WandbCallback(), "W&B", reporter))
    where = f"{wanted.entity}/{wanted.project}" if wanted.entity else wanted.project
    if why_offline:
        reporter.event(
            f"W&B logs offline, into this job's tracking files, because {why_offline}; "
            f"`wandb sync` uploads them to {where} later",
            tracker="W&B",
            mode="offline",
        )
    else:
        reporter.event(f"W&B logs to {where}", tracker="W&B", mode="online")


def _without_credentials(uri: str) -> str:
    """`uri` as events may show it: a user and password in it (a worker's default URI may hold
    them) are left out, as the job's whole team reads its events."""
    try:
        parts = urlsplit(uri)
        if parts.username is None and parts.password is None:
            return uri
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "the configured MLflow server"


def _mlflow(
    wanted: MlflowSettings,
    settings: TrackerSettings,
    directory: Path,
    reporter: Reporter,
    trackers: Trackers,
    *,
    resuming: bool,
) -> None:
    uri = wanted.tracking_uri or settings.mlflow_tracking_uri
    if uri is None:
        reporter.event(
            "MLflow is asked for but no tracking URI is given, nor set on the workers "
            "(TUNELAB_MLFLOW_TRACKING_URI); training goes on without it",
            level="warning",
            tracker="MLflow",
        )
        return
    if not _installed("mlflow"):
        reporter.event(
            "MLflow is not installed on this worker (pip install 'tunelab[trackers]'); training goes on without it",
            level="warning",
            tracker="MLflow",
        )
        return
    env = {
        "MLFLOW_TRACKING_URI": uri,
        # A server that is down must not hold training for minutes of retries.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(int(settings.reach_timeout_s), 1) * 2),
    }
    if wanted.experiment_name:
        env["MLFLOW_EXPERIMENT_NAME"] = wanted.experiment_name
    run_file = directory / MLFLOW_RUN_FILE
    earlier_run = run_file.read_text().strip() if resuming and run_file.is_file() else ""
    if _RUN_ID.fullmatch(earlier_run):
        env["MLFLOW_RUN_ID"] = earlier_run
    with _environment({**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}):
        try:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as error:  # noqa: BLE001 - whatever MLflow raises, it is not there for this run
            shown = _without_credentials(uri)
            reporter.event(
                f"MLflow at {shown} cannot be reached ({type(error).__name__}: {_short(error).replace(uri, shown)}); "
                "training goes on without it",
                level="warning",
                tracker="MLflow",
            )
            return
    directory.mkdir(parents=True, exist_ok=True)
    trackers.mlflow_uri = uri
    trackers.environment.update(env)
    trackers.callbacks.append(GuardedTracker(ResumableMLflowCallback(run_file), "MLflow", reporter))
    experiment = f", experiment {wanted.experiment_name}" if wanted.experiment_name else ""
    goes_on = f" (run {earlier_run}, resumed)" if "MLFLOW_RUN_ID" in env else ""
    reporter.event(f"MLflow logs to {_without_credentials(uri)}{experiment}{goes_on}", tracker="MLflow")


@contextmanager
def experiment_trackers(
    spec: TrainingSpec, settings: TrackerSettings, output_dir: Path, reporter: Reporter, *, resuming: bool = False
) -> Iterator[Trackers]:
    """The tracker callbacks of this run, with their environment set while the block runs;
    `resuming` (from a checkpoint) goes on with the MLflow run of the earlier attempt.
    On leaving, an open W&B or MLflow run is closed (FAILED when the block raised)."""
    trackers = Trackers(run_name=settings.run_name)
    root = tracking_dir(output_dir)
    _tensorboard(root / "tensorboard", reporter, trackers)
    if (wanted_wandb := spec.integration("wandb")) is not None:
        _wandb(wanted_wandb, settings, root, reporter, trackers)
    if (wanted_mlflow := spec.integration("mlflow")) is not None:
        _mlflow(wanted_mlflow, settings, root, reporter, trackers, resuming=resuming)
    failed = True
    with _environment(trackers.environment):
        if trackers.mlflow_uri is not None:
            import mlflow

            mlflow.set_tracking_uri(trackers.mlflow_uri)  # the callback keeps a URI set before: this run's
        try:
            yield trackers
            failed = False
        finally:
            _close_runs(trackers, failed=failed)


def _close_runs(trackers: Trackers, *, failed: bool) -> None:
    """End what the callbacks left open: the Trainer closes them at the end of training, but not
    when training raised or stopped before it began."""
    for tracker in trackers.callbacks:
        try:
            if tracker.name == "MLflow":
                import mlflow

                if mlflow.active_run() is not None:
                    mlflow.end_run(status="FAILED" if failed else "FINISHED")
            elif tracker.name == "W&B":
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1 if failed else 0)
                wandb.teardown()  # stops the wandb service process this run started
            elif tracker.name == "TensorBoard" and tracker.inner.tb_writer is not None:
                tracker.inner.tb_writer.close()
                tracker.inner.tb_writer = None
        except Exception as error:  # noqa: BLE001 - closing a tracker must never fail the job
            if not tracker.failed:
                tracker.fail(error)
