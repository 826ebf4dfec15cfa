"""A job launched with an MLflow integration, trained on a real worker: the MLflow server the
test runs holds the job's metrics, and its TensorBoard files download with its artifacts."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.helpers import MlflowServer, add_dataset, chat_rows, tensorboard_scalars, tiny_spec, wait_for


@pytest.fixture
def acme(make_account, redis_broker):
    return make_account(team="acme", role="member")


def test_a_job_with_an_mlflow_integration_leaves_its_metrics_on_the_server_and_tensorboard_files(
    acme, db, workers, tmp_path
):
    with MlflowServer(tmp_path / "mlflow") as mlflow_server:
        dataset = add_dataset(db, acme, chat_rows())
        integrations = [{"type": "mlflow", "mlflow": {"tracking_uri": mlflow_server.url, "experiment_name": "acme"}}]
        body = {
            "spec": tiny_spec(max_steps=5, integrations=integrations),
            "dataset_id": dataset.id,
            "queue": workers.queue,
            "name": "colours",
        }
        response = acme.client.post("/api/jobs", json=body)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert response.json()["spec"]["integrations"][0]["mlflow"]["experiment_name"] == "acme"
        workers.start()

        def finished():
            job = acme.client.get(f"/api/jobs/{job_id}").json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, timeout=240, message="the job to finish")
        assert job["state"] == "succeeded", job["error"]
        points = acme.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()
        losses = [(point["step"], point["values"]["loss"]) for point in points]
        assert [step for step, _ in losses] == [1, 2, 3, 4, 5]

        (run,) = mlflow_server.runs("acme")
        assert run.info.run_name == f"tunelab-job-{job_id}-colours" and run.info.status == "FINISHED"
        history = mlflow_server.metric_history(run.info.run_id, "loss")
        assert [step for step, _ in history] == [1, 2, 3, 4, 5]
        assert [value for _, value in history] == pytest.approx([value for _, value in losses])

    events = [
        event["message"] for event in acme.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()
    ]
    assert f"MLflow logs to {mlflow_server.url}, experiment acme" in events

    (tracking,) = [a for a in acme.client.get(f"/api/jobs/{job_id}/artifacts").json() if a["kind"] == "tracking"]
    assert tracking["size_bytes"] > 0
    archive = acme.client.get(f"/api/jobs/{job_id}/artifacts/{tracking['id']}/archive")
    assert archive.status_code == 200
    zipfile.ZipFile(io.BytesIO(archive.content)).extractall(tmp_path / "download")
    tensorboard = tensorboard_scalars(tmp_path / "download", "train/loss")
    assert [step for step, _ in tensorboard] == [1, 2, 3, 4, 5]
    assert [value for _, value in tensorboard] == pytest.approx([value for _, value in losses], rel=1e-6)
