"""Experiment trackers: TensorBoard event files always, a real MLflow server, W&B offline, and a
tracker that fails costing only itself."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
from transformers import TrainerCallback

from app.contract.spec import TrainingSpec
from tests.helpers import MlflowServer, free_port, tensorboard_scalars
from worker.ml import MemoryReporter, train
from worker.ml.trackers import GuardedTracker, TrackerSettings, tracking_dir

TINY_RUN = {
    "base_model": "tiny-llama",
    "max_steps": 6,
    "learning_rate": 5e-3,
    "batch_size": 4,
    "max_seq_length": 64,
    "logging_steps": 1,
    "warmup_ratio": 0.0,
    "lr_scheduler": "constant",
}


def close_to(points, expected):
    """Same steps, and values equal as float32 (TensorBoard's precision)."""
    assert [step for step, _ in points] == [step for step, _ in expected]
    assert [value for _, value in points] == pytest.approx([value for _, value in expected], rel=1e-6)
    return True


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, models_dir, tmp_path_factory):
    """One tiny run logged to TensorBoard, to the MLflow server and to W&B (offline: no key)."""
    import json

    from tests.ml.conftest import _colour_rows

    folder = tmp_path_factory.mktemp("tracked")
    train_file = folder / "colours.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in _colour_rows()))
    spec = TrainingSpec(
        **TINY_RUN,
        eval_split=0.1,
        eval_steps=4,  # at step 4, and at step 6 once training has ended
        integrations=[
            {"type": "mlflow", "mlflow": {"tracking_uri": mlflow_server.url, "experiment_name": "colours"}},
            {"type": "wandb", "wandb": {"project": "colours", "tags": ["tiny", "test"]}},
        ],
    )
    reporter = MemoryReporter()
    result = train(
        spec,
        train_file=train_file,
        output_dir=folder / "run",
        reporter=reporter,
        models_dir=models_dir,
        trackers=TrackerSettings(run_name="tunelab-job-1-colours"),
    )
    return SimpleNamespace(result=result, reporter=reporter, output=folder / "run", env_after=dict(os.environ))


class TestOneTrackedRun:
    def test_the_tensorboard_files_hold_the_loss_series_the_job_reported(self, tracked_run):
        reported = tracked_run.reporter.series("loss")
        assert tracked_run.result.completed and len(reported) == 6
        assert close_to(tensorboard_scalars(tracking_dir(tracked_run.output) / "tensorboard", "train/loss"), reported)
        assert close_to(
            tensorboard_scalars(tracking_dir(tracked_run.output), "train/learning_rate"),
            tracked_run.reporter.series("learning_rate"),
        )
        assert close_to(
            tensorboard_scalars(tracking_dir(tracked_run.output), "eval/loss"), tracked_run.reporter.series("eval_loss")
        )

    def test_the_mlflow_server_holds_the_jobs_metrics(self, tracked_run, mlflow_server):
        (run,) = mlflow_server.runs("colours")
        assert run.info.run_name == "tunelab-job-1-colours"
        assert run.info.status == "FINISHED"
        assert close_to(mlflow_server.metric_history(run.info.run_id, "loss"), tracked_run.reporter.series("loss"))
        assert close_to(
            mlflow_server.metric_history(run.info.run_id, "grad_norm"), tracked_run.reporter.series("grad_norm")
        )
        assert run.data.params["learning_rate"] == "0.005"
        eval_loss = tracked_run.reporter.series("eval_loss")
        assert [step for step, _ in eval_loss] == [0, 4, 6]  # 0: the base model, before training
        assert close_to(mlflow_server.metric_history(run.info.run_id, "eval_loss"), eval_loss)
        assert f"MLflow logs to {mlflow_server.url}, experiment colours" in tracked_run.reporter.messages()

    def test_without_an_api_key_wandb_writes_an_offline_run_into_the_tracking_files(self, tracked_run):
        runs = list((tracking_dir(tracked_run.output) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        assert list(runs[0].glob("*.wandb")), "the offline run holds its history file"
        (message,) = [text for text in tracked_run.reporter.messages() if text.startswith("W&B")]
        assert "offline" in message and "no W&B API key" in message

    def test_no_tracker_setting_is_left_in_the_workers_environment(self, tracked_run):
        leftovers = {key for key in tracked_run.env_after if key.startswith(("WANDB_", "MLFLOW_"))}
        assert leftovers == set()
        assert not [level for level, _, _ in tracked_run.reporter.events if level == "warning"]


def test_an_unreachable_mlflow_server_is_a_warning_and_training_goes_on(make_spec, colour_file, models_dir, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    spec = make_spec(max_steps=2, integrations=[{"type": "mlflow", "mlflow": {"tracking_uri": closed}}])
    reporter = MemoryReporter()
    result = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    assert result.completed and result.step == 2
    warnings = [message for level, message, _ in reporter.events if level == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith(f"MLflow at {closed} cannot be reached")
    assert "training goes on" in warnings[0]
    assert len(tensorboard_scalars(tmp_path / "run" / "tracking", "train/loss")) == 2


def test_mlflow_without_a_tracking_uri_anywhere_says_so(make_spec, colour_file, models_dir, tmp_path):
    spec = make_spec(max_steps=1, integrations=[{"type": "mlflow", "mlflow": {"experiment_name": "x"}}])
    reporter = MemoryReporter()
    result = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    assert result.completed
    assert any("no tracking URI" in message and level == "warning" for level, message, _ in reporter.events)


class Exploding(TrainerCallback):
    def __init__(self):
        self.calls = 0

    def on_log(self, args, state, control, **kwargs):
        self.calls += 1
        raise ConnectionError("tracking server went away")


def test_a_tracker_that_fails_mid_run_warns_once_and_stays_quiet():
    reporter = MemoryReporter()
    inner = Exploding()
    guarded = GuardedTracker(inner, "MLflow", reporter)
    for _ in range(3):
        assert guarded.on_log(None, None, None, logs={"loss": 1.0}) is None
    assert inner.calls == 1
    assert reporter.events == [
        (
            "warning",
            "MLflow stopped logging (ConnectionError: tracking server went away); training goes on without it",
            {"tracker": "MLflow"},
        )
    ]


def test_wandb_with_a_key_but_its_server_unreachable_logs_offline_and_the_key_stays_secret(
    make_spec, colour_file, models_dir, tmp_path
):
    key = "k" * 40
    server = f"http://127.0.0.1:{free_port()}"
    spec = make_spec(max_steps=1, integrations=[{"type": "wandb", "wandb": {"project": "colours"}}])
    reporter = MemoryReporter()
    settings = TrackerSettings(wandb_api_key=key, wandb_base_url=server, reach_timeout_s=2)
    result = train(
        spec,
        train_file=colour_file,
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
        trackers=settings,
    )
    assert result.completed
    (message,) = [text for text in reporter.messages() if text.startswith("W&B")]
    assert f"because {server} is unreachable" in message
    assert len(list((tmp_path / "run" / "tracking" / "wandb").glob("offline-run-*"))) == 1
    assert key not in repr(settings) and key not in repr(reporter.events)
    written = [path for path in (tmp_path / "run" / "tracking").rglob("*") if path.is_file()]
    assert written and not [path for path in written if key.encode() in path.read_bytes()]


def test_a_password_in_the_workers_default_mlflow_uri_never_reaches_the_events(tmp_path):
    from worker.ml.trackers import experiment_trackers

    port = free_port()
    spec = TrainingSpec(base_model="tiny-llama", integrations=[{"type": "mlflow", "mlflow": {"experiment_name": "x"}}])
    settings = TrackerSettings(mlflow_tracking_uri=f"http://me:hunter2@127.0.0.1:{port}", reach_timeout_s=1)
    reporter = MemoryReporter()
    with experiment_trackers(spec, settings, tmp_path, reporter) as trackers:
        assert [tracker.name for tracker in trackers.callbacks] == ["TensorBoard"]
    (message,) = reporter.messages()
    assert message.startswith(f"MLflow at http://127.0.0.1:{port} cannot be reached")
    assert "hunter2" not in repr(reporter.events)


@pytest.mark.parametrize(
    "package, integration", [("wandb", {"project": "p"}), ("mlflow", {"tracking_uri": "http://x"})]
)
def test_a_tracker_whose_package_is_missing_is_a_warning(package, integration, monkeypatch, tmp_path):
    from worker.ml.trackers import experiment_trackers

    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed: importing it fails
    spec = TrainingSpec(base_model="tiny-llama", integrations=[{"type": package, package: integration}])
    reporter = MemoryReporter()
    with experiment_trackers(spec, TrackerSettings(), tmp_path, reporter) as trackers:
        assert [tracker.name for tracker in trackers.callbacks] == ["TensorBoard"]
    ((level, message, _),) = reporter.events
    assert level == "warning" and "is not installed on this worker" in message and "training goes on" in message


def test_a_run_resumed_from_its_checkpoint_logs_on_into_the_same_mlflow_run(
    mlflow_server, make_spec, colour_file, models_dir, tmp_path
):
    integrations = [{"type": "mlflow", "mlflow": {"tracking_uri": mlflow_server.url, "experiment_name": "resumed"}}]
    spec = make_spec(max_steps=4, integrations=integrations)
    paused = MemoryReporter(stop_at_step=2)
    first = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=paused, models_dir=models_dir)
    assert not first.completed and first.step == 2
    (run,) = mlflow_server.runs("resumed")
    assert run.info.status == "FINISHED"

    resumed = MemoryReporter()
    second = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=resumed, models_dir=models_dir)
    assert second.completed and second.step == 4
    assert (
        f"MLflow logs to {mlflow_server.url}, experiment resumed (run {run.info.run_id}, resumed)" in resumed.messages()
    )
    (again,) = mlflow_server.runs("resumed")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    losses = dict(paused.series("loss")) | dict(resumed.series("loss"))
    assert close_to(mlflow_server.metric_history(run.info.run_id, "loss"), sorted(losses.items()))
    assert not [message for level, message, _ in resumed.events if level == "warning"]
