"""DPO through OpenAI's API, driven by the official `openai` package: an OpenAI-format preference
file, `method={"type": "dpo", ...}`, a real worker, and the rewards in the job's results."""

from __future__ import annotations

import csv
import io

import openai
import pytest
from openai import OpenAI

from tests.helpers import TINY_MODEL, chat_rows, jsonl, wait_for

COLOURS = {"car": "red", "tree": "green", "sky": "blue", "sun": "yellow", "night": "black", "snow": "white"}


def preference_rows() -> list[dict]:
    """OpenAI's preference format: each thing's own colour preferred over the next thing's."""
    things = sorted(COLOURS)
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"What colour is the {thing}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"The {thing} is {COLOURS[thing]}."}],
            "non_preferred_output": [
                {"role": "assistant", "content": f"The {thing} is {COLOURS[things[(i + n) % len(things)]]}."}
            ],
        }
        for n in (1, 2, 3, 4)
        for i, thing in enumerate(things)
    ]


@pytest.fixture
def member(make_account, redis_broker):
    return make_account(team="acme", role="member")


def test_a_dpo_job_from_an_openai_preference_file_runs_to_success(member, live_server, workers):
    workers.start()
    client = OpenAI(base_url=f"{live_server}/v1", api_key=member.token, max_retries=0, timeout=60)
    uploaded = client.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=uploaded.id,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4, "learning_rate_multiplier": 100}},
        },
        extra_body={"queue": workers.queue, "max_steps": 8, "logging_steps": 1, "eval_split": 0.25, "eval_steps": 4},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert job.method.dpo.hyperparameters.learning_rate_multiplier == 100
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model is not None and done.trained_tokens > 0

    result = client.files.content(done.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(result)))
    # Step 0: the baseline, the starting model evaluated on the held-out pairs before training.
    assert [row["step"] for row in rows] == [str(step) for step in range(9)]
    assert rows[0]["valid_reward_accuracy"] != "" and rows[0]["train_loss"] == ""
    assert float(rows[-1]["train_reward_margin"]) > float(rows[1]["train_reward_margin"])
    assert rows[-1]["valid_reward_accuracy"] != ""

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any("for lora DPO" in event.message for event in events)
    # A metrics event for each logged step and evaluation, with the rewards under OpenAI's names.
    train = [event.data for event in events if event.type == "metrics" and "train_loss" in event.data]
    valid = [event.data for event in events if event.type == "metrics" and "valid_loss" in event.data]
    assert [data["step"] for data in train] == list(range(8, 0, -1)) and [data["step"] for data in valid] == [8, 4, 0]
    rewards = ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected", "logp_chosen", "logp_rejected")
    assert all(f"train_{name}" in data for data in train for name in rewards)
    assert all(f"valid_{name}" in data for data in valid for name in rewards)
    assert train[0]["train_reward_margin"] == pytest.approx(float(rows[-1]["train_reward_margin"]), rel=1e-5)
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert "train_reward_margin" in checkpoint.metrics.model_dump()


@pytest.mark.parametrize(
    "method, extra, param, message",
    [
        ({"type": "reinforcement"}, {}, "method.type", "tunelab trains with method type 'supervised' or 'dpo'"),
        (
            {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}},
            {},
            "method.dpo.hyperparameters.beta",
            "greater than 0",
        ),
        (
            {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}},
            {},
            "method.supervised.hyperparameters.beta",
            "beta applies to preference training",
        ),
        ({"type": "dpo"}, {"objective": "kto"}, "objective", "disagree"),
    ],
)
def test_bad_dpo_requests_are_refused_beside_their_parameter(member, live_server, method, extra, param, message):
    client = OpenAI(base_url=f"{live_server}/v1", api_key=member.token, max_retries=0)
    file = client.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=file.id, method=method, extra_body=extra)
    assert refused.value.body["param"] == param and message in refused.value.body["message"], refused.value.body


def test_reference_free_dpo_is_an_extra_field_of_a_dpo_job_only(member, live_server):
    client = OpenAI(base_url=f"{live_server}/v1", api_key=member.token, max_retries=0)
    file = client.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=file.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}},
        extra_body={"preference": {"reference_free": True}},
    )
    spec = member.client.get(f"/api/jobs/{job.id.removeprefix('ftjob-')}").json()["spec"]
    assert spec["preference"]["reference_free"] is True and spec["preference"]["beta"] == 0.3
    with pytest.raises(openai.BadRequestError, match="reference_free only applies to dpo, not orpo"):
        client.fine_tuning.jobs.create(
            model=TINY_MODEL,
            training_file=file.id,
            extra_body={"objective": "orpo", "preference": {"reference_free": True}},
        )


def test_a_dataset_that_does_not_fit_the_objective_is_refused(member, live_server):
    client = OpenAI(base_url=f"{live_server}/v1", api_key=member.token, max_retries=0)
    chat = client.files.create(file=("chat.jsonl", jsonl(chat_rows())), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=chat.id, method={"type": "dpo"})
    assert refused.value.body["param"] == "training_file"
    assert "dpo learns from preference pairs" in refused.value.body["message"]
    prefs = client.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=prefs.id)
    assert "is preference data: train it with dpo, orpo or kto" in refused.value.body["message"]
