"""OpenAI's `integrations` on /v1/fine_tuning/jobs, sent by the official `openai` package: W&B
as OpenAI spells it, MLflow in the same shape, stored in the job's spec and returned on the job
object; a bad one refused beside its parameter."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.helpers import TINY_MODEL, add_dataset, chat_rows


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme", role="member")


@pytest.fixture
def client(acme) -> OpenAI:
    # The app in this process: the package's requests go through the account's test client.
    return OpenAI(base_url="http://testserver/v1", api_key=acme.token, max_retries=0, http_client=acme.client)


@pytest.fixture
def training_file(acme, db) -> str:
    return f"file-{add_dataset(db, acme, chat_rows()).id}"


WANDB = {"type": "wandb", "wandb": {"project": "support-bot", "entity": "acme-ml", "name": "v3", "tags": ["nightly"]}}
MLFLOW = {"type": "mlflow", "mlflow": {"tracking_uri": "https://mlflow.acme.test", "experiment_name": "support"}}


def test_integrations_are_kept_on_the_job_and_returned_as_sent(client, acme, training_file):
    job = client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=training_file, integrations=[WANDB, MLFLOW])
    assert job.to_dict()["integrations"] == [WANDB, MLFLOW]
    assert client.fine_tuning.jobs.retrieve(job.id).to_dict()["integrations"] == [WANDB, MLFLOW]
    spec = acme.client.get(f"/api/jobs/{job.id.removeprefix('ftjob-')}").json()["spec"]
    assert spec["integrations"] == [WANDB, MLFLOW]


def test_a_job_without_integrations_has_none(client, training_file):
    job = client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=training_file)
    assert job.integrations == []


def test_wandb_as_the_package_types_it_fills_its_defaults(client, training_file):
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL, training_file=training_file, integrations=[{"type": "wandb", "wandb": {"project": "p"}}]
    )
    assert job.to_dict()["integrations"][0] == {
        "type": "wandb",
        "wandb": {"project": "p", "entity": None, "name": None, "tags": []},
    }


@pytest.mark.parametrize(
    "integration, param, message",
    [
        ({"type": "wandb", "wandb": {"name": "no project"}}, "integrations.0.wandb.project", "Field required"),
        ({"type": "wandb", "wandb": {"project": "a/b"}}, "integrations.0.wandb.project", "letters, digits"),
        ({"type": "wandb", "wandb": {"project": "p", "tags": ["a,b"]}}, "integrations.0.wandb.tags", "no comma"),
        ({"type": "comet"}, "integrations.0.type", "Input should be 'wandb' or 'mlflow'"),
        ({"type": "wandb"}, "integrations.0", "a wandb integration needs its settings"),
        ({"type": "mlflow", "mlflow": {"tracking_uri": "file:///etc"}}, "integrations.0.mlflow.tracking_uri", "http"),
        (
            {"type": "mlflow", "mlflow": {"tracking_uri": "sqlite:////tmp/mlflow.db"}},
            "integrations.0.mlflow.tracking_uri",
            "must be an http:// or https:// URL",
        ),
        (
            {"type": "mlflow", "mlflow": {"tracking_uri": "https://me:hunter2@mlflow.acme.test"}},
            "integrations.0.mlflow.tracking_uri",
            "must not hold credentials",
        ),
    ],
)
def test_a_bad_integration_is_refused_beside_its_parameter(client, training_file, integration, param, message):
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=training_file, integrations=[integration])
    body = refused.value.body
    assert body["param"] == param and message in body["message"], body
    assert "hunter2" not in str(body), "a password given by mistake is not echoed back"
    assert client.fine_tuning.jobs.list().data == []


def test_each_integration_is_given_at_most_once(client, training_file):
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=training_file, integrations=[WANDB, WANDB])
    assert "at most once" in refused.value.body["message"]
