"""The OpenAI-compatible API driven by the official `openai` package, as a team would drive it:
against the app served by uvicorn, with real Celery workers (one training, one inference) on
Redis and Postgres."""

from __future__ import annotations

import io
import uuid
import zipfile
from dataclasses import dataclass

import httpx
import openai
import pytest
from openai import OpenAI

from tests.helpers import TINY_MODEL, Account, SharedServices, chat_rows, forget_cached_settings, jsonl, once, wait_for

SKY = [{"role": "user", "content": "What colour is the sky?"}]
SNOW = [{"role": "user", "content": "What colour is the snow?"}]


@pytest.fixture
def inference_queue(workers, monkeypatch) -> str:
    """This test's own inference queue, for the app and the worker alike."""
    queue = f"{workers.queue}-inference"
    monkeypatch.setenv("TUNELAB_INFERENCE_QUEUE", queue)
    forget_cached_settings()
    return queue


@pytest.fixture
def server(redis_broker, inference_queue, live_server) -> str:
    return live_server


@pytest.fixture
def acme(make_account):
    return make_account(team="acme", role="member")


def openai_client(server: str, account) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key=account.token, max_retries=0, timeout=120)


def _finished(client: OpenAI, job_id: str):
    job = client.fine_tuning.jobs.retrieve(job_id)
    return job if job.status in ("succeeded", "failed", "cancelled") else None


def _unzip(response: httpx.Response, target):
    assert response.status_code == 200, response.text
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    archive.extractall(target)
    return target / archive.namelist()[0].split("/")[0]


def _greedy(model, tokenizer, messages) -> str:
    import torch

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    return tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_a_file_with_errors_is_refused_with_every_error_and_its_line_and_nothing_is_stored(acme, server):
    client = openai_client(server, acme)
    good = jsonl(chat_rows(1))
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(
            file=("bad.jsonl", good + b"{not json\n" + b'{"prompt": 1}\n' + b"[1]\n" * 3), purpose="fine-tune"
        )
    assert refused.value.body["param"] == "file" and refused.value.body["type"] == "invalid_request_error"
    message = refused.value.body["message"]
    assert "line 2:" in message and "line 3:" in message
    assert "\nlines 4, 5, 6 (3 rows): the line is a list, not a JSON object" in message
    assert client.files.list().data == []


@dataclass
class FineTuned:
    """A file uploaded and a job trained on it through the `openai` package, once for the class."""

    server: str
    account: Account
    client: OpenAI
    content: bytes  # the file as uploaded
    uploaded: object  # what files.create answered
    job: object  # what fine_tuning.jobs.create answered
    done: object  # the job once finished

    @property
    def number(self) -> str:
        """The job's id in tunelab's own API."""
        return self.job.id.removeprefix("ftjob-")

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.account.token}"}
        return httpx.request(
            method, f"{self.server}/api/jobs/{self.number}{path}", headers=headers, timeout=60, **kwargs
        )

    @once
    def merge(self) -> tuple[httpx.Response, dict]:
        """Ask for the merged model and wait for a worker to build it: the answer to the
        request, and the merged artifact."""
        requested = self.api("POST", "/merge")

        def merged():
            return next((a for a in self.api("GET", "/artifacts").json() if a["kind"] == "merged"), None)

        return requested, wait_for(merged, timeout=180, interval=0.5, message="the merged model")


@pytest.fixture(scope="class")
def fine_tuned(migrated_database, shared_models_dir, redis_url, tmp_path_factory):
    inference_queue = f"test-{uuid.uuid4().hex[:10]}-inference"
    services = SharedServices(
        migrated_database,
        tmp_path_factory.mktemp("data"),
        shared_models_dir,
        redis_url,
        TUNELAB_INFERENCE_QUEUE=inference_queue,
    )
    with services:
        server = services.serve()
        services.workers.start()
        services.workers.start(queue=inference_queue, max_tasks_per_child=None)
        acme = services.account(team="acme")
        client = openai_client(server, acme)
        content = jsonl(chat_rows())
        uploaded = client.files.create(file=("colours.jsonl", content), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=TINY_MODEL,
            training_file=uploaded.id,
            suffix="colours",
            seed=42,
            metadata={"ticket": "ML-7"},
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 50}},
            },
            extra_body={
                "queue": services.workers.queue,
                "max_steps": 24,
                "save_steps": 12,
                "logging_steps": 1,
                "max_seq_length": 128,
                # Packed rows give each of the 24 steps many examples: enough for the answers checked below.
                "packing": "on",
            },
        )
        done = wait_for(lambda: _finished(client, job.id), timeout=300, interval=0.5, message="the job to finish")
        yield FineTuned(server, acme, client, content, uploaded, job, done)


class TestAJobFineTunedWithTheOpenAIPackage:
    """Each test checks one thing about the same job, trained once (`fine_tuned`) on a worker
    for training, and chatted with through a worker for inference. The merge tests come last:
    the merge adds events to the job."""

    def test_an_uploaded_file_is_listed_and_reads_back_as_sent(self, fine_tuned):
        client, uploaded, content = fine_tuned.client, fine_tuned.uploaded, fine_tuned.content
        assert uploaded.id.startswith("file-") and uploaded.bytes == len(content) and uploaded.purpose == "fine-tune"
        assert [f.id for f in client.files.list().data] == [uploaded.id]
        assert client.files.content(uploaded.id).content == content

    def test_a_created_job_echoes_its_request_and_starts_queued(self, fine_tuned):
        job = fine_tuned.job
        assert job.id.startswith("ftjob-") and job.status == "queued" and job.model == TINY_MODEL
        assert job.hyperparameters.batch_size == 4 and job.hyperparameters.learning_rate_multiplier == 50
        assert job.training_file == fine_tuned.uploaded.id and job.seed == 42 and job.metadata == {"ticket": "ML-7"}
        assert job.fine_tuned_model is None and job.finished_at is None

    def test_the_finished_job_names_its_fine_tuned_model_and_counts_its_tokens(self, fine_tuned):
        done, job = fine_tuned.done, fine_tuned.job
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"ft:{TINY_MODEL}:acme:colours:{job.id}" and done.organization_id == "acme"
        assert done.trained_tokens > 0 and done.finished_at >= done.created_at and done.error is None

    def test_its_events_page_newest_first_from_success_back_to_creation(self, fine_tuned):
        events = list(fine_tuned.client.fine_tuning.jobs.list_events(fine_tuned.job.id, limit=5))  # all the pages
        assert events[0].message == "Job succeeded after 24 steps" and events[-1].message.startswith("Job created by")
        assert len({event.id for event in events}) == len(events) > 5

    def test_its_events_carry_a_metrics_event_for_each_logged_step_among_the_messages(self, fine_tuned):
        client, job = fine_tuned.client, fine_tuned.job
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=7))  # pages that cut across both kinds
        kinds = [event.type for event in events]
        metrics = [event for event in events if event.type == "metrics"]
        assert [event.data["step"] for event in metrics] == list(range(24, 0, -1))
        assert all(event.data["total_steps"] == 24 and event.data["train_loss"] > 0 for event in metrics)
        assert all(0 <= event.data["train_mean_token_accuracy"] <= 1 for event in metrics)
        assert metrics[0].data["train_loss"] < metrics[-1].data["train_loss"]  # it learned
        assert metrics[0].message == f"Step 24/24: training loss={metrics[0].data['train_loss']:.4g}"
        # The messages sit among the steps, in the order they were recorded: step 12's checkpoint
        # below (before) step 24's metrics and above (after) step 1's.
        saved = next(i for i, event in enumerate(events) if event.message == "Saved checkpoint at step 12")
        assert kinds.index("metrics") < saved < len(events) - 1 - kinds[::-1].index("metrics")
        after_third = client.fine_tuning.jobs.list_events(job.id, after=events[2].id, limit=2)
        assert [event.id for event in after_third.data] == [event.id for event in events[3:5]]
        with pytest.raises(openai.BadRequestError, match="one of this job's event ids"):
            client.fine_tuning.jobs.list_events(job.id, after="ftevent-999999-2")

    def test_its_result_file_is_the_metrics_csv_and_goes_only_with_its_job(self, fine_tuned):
        client, done = fine_tuned.client, fine_tuned.done
        results = client.files.content(done.result_files[0]).text.splitlines()
        assert results[0].startswith("step,train_loss,train_accuracy,valid_loss") and len(results) == 25
        with pytest.raises(openai.BadRequestError, match="belongs to its job"):
            client.files.delete(done.result_files[0])

    def test_its_checkpoints_list_newest_first_and_page_with_after(self, fine_tuned):
        client, job, done = fine_tuned.client, fine_tuned.job, fine_tuned.done
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == [24, 12]
        assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-24"
        assert checkpoints[0].metrics.train_loss > 0 and checkpoints[0].fine_tuning_job_id == job.id
        older = client.fine_tuning.jobs.checkpoints.list(job.id, after=checkpoints[0].id).data
        assert [c.step_number for c in older] == [12]

    def test_the_fine_tuned_model_is_listed_as_the_teams_beside_the_base_model(self, fine_tuned):
        client, name = fine_tuned.client, fine_tuned.done.fine_tuned_model
        models = {model.id: model for model in client.models.list()}
        assert models[TINY_MODEL].owned_by == "system" and models[name].owned_by == "acme"
        assert client.models.retrieve(name).id == name

    def test_the_fine_tuned_model_answers_as_it_was_taught(self, fine_tuned):
        name = fine_tuned.done.fine_tuned_model
        reply = fine_tuned.client.chat.completions.create(model=name, messages=SKY, temperature=0, max_tokens=30)
        assert reply.choices[0].message.content == "The sky is blue." and reply.choices[0].finish_reason == "stop"
        assert reply.model == name and reply.usage.completion_tokens > 0
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    def test_a_streamed_answer_arrives_in_chunks_with_the_usage_last(self, fine_tuned):
        chunks = list(
            fine_tuned.client.chat.completions.create(
                model=fine_tuned.done.fine_tuned_model,
                messages=SNOW,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert (
            "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "The snow is white."
        )
        assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0

    def test_the_base_model_does_not_give_the_taught_answer(self, fine_tuned):
        base = fine_tuned.client.chat.completions.create(model=TINY_MODEL, messages=SKY, temperature=0, max_tokens=5)
        assert base.choices[0].finish_reason == "length" and base.choices[0].message.content != "The sky is blue."

    def test_an_earlier_checkpoint_answers_as_a_model_of_its_own(self, fine_tuned):
        client = fine_tuned.client
        earlier = client.fine_tuning.jobs.checkpoints.list(fine_tuned.job.id).data[1]
        reply = client.chat.completions.create(
            model=earlier.fine_tuned_model_checkpoint, messages=SKY, temperature=0, max_tokens=30
        )
        assert reply.choices[0].message.content and reply.model.endswith(":ckpt-step-12")

    def test_the_adapter_archive_loads_with_peft_and_answers_the_same(self, fine_tuned, tmp_path):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from app.config import get_settings

        folder = _unzip(fine_tuned.api("GET", "/adapter.zip"), tmp_path / "a")
        base_dir = get_settings().models_path / TINY_MODEL
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder).eval()
        assert _greedy(adapted, tokenizer, SKY) == "The sky is blue."

    def test_a_merge_is_built_by_a_worker_reporting_as_events_and_only_once(self, fine_tuned):
        requested, artifact = fine_tuned.merge()
        assert requested.status_code == 202 and requested.json()["status"] == "queued"
        messages = [e.message for e in fine_tuned.client.fine_tuning.jobs.list_events(fine_tuned.job.id, limit=100)]
        assert (
            messages[0].startswith("Saved the merged model")
            and "Merge: Merging the adapter into the base weights" in messages
        )
        again = fine_tuned.api("POST", "/merge")
        assert again.status_code == 200 and again.json()["artifact"]["id"] == artifact["id"]

    def test_the_merged_model_has_no_lora_weights_and_answers_the_same(self, fine_tuned, tmp_path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from app.config import get_settings

        _requested, artifact = fine_tuned.merge()
        archive = fine_tuned.api("GET", f"/artifacts/{artifact['id']}/archive")
        merged_model = AutoModelForCausalLM.from_pretrained(_unzip(archive, tmp_path / "m")).eval()
        assert not any("lora" in name for name, _ in merged_model.named_parameters())
        tokenizer = AutoTokenizer.from_pretrained(get_settings().models_path / TINY_MODEL)
        assert _greedy(merged_model, tokenizer, SKY) == "The sky is blue."


def test_another_teams_files_jobs_and_models_are_not_found(acme, make_account, server, workers):
    globex = make_account(team="globex")
    ours, theirs = openai_client(server, acme), openai_client(server, globex)
    file = ours.files.create(file=("colours.jsonl", jsonl(chat_rows())), purpose="fine-tune")
    job = ours.fine_tuning.jobs.create(model=TINY_MODEL, training_file=file.id, extra_body={"queue": workers.queue})
    model = f"ft:{TINY_MODEL}:acme::{job.id}"

    for call in (
        lambda: theirs.files.retrieve(file.id),
        lambda: theirs.files.content(file.id),
        lambda: theirs.files.delete(file.id),
        lambda: theirs.fine_tuning.jobs.retrieve(job.id),
        lambda: theirs.fine_tuning.jobs.cancel(job.id),
        lambda: theirs.fine_tuning.jobs.list_events(job.id),
        lambda: theirs.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: theirs.models.retrieve(model),
        lambda: theirs.chat.completions.create(model=model, messages=SKY),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert set(missing.value.body) == {"message", "type", "param", "code"}
    assert theirs.files.list().data == [] and theirs.fine_tuning.jobs.list().data == []
    with pytest.raises(openai.BadRequestError) as refused:
        theirs.fine_tuning.jobs.create(model=TINY_MODEL, training_file=file.id)
    assert refused.value.body["param"] == "training_file"
    assert ours.fine_tuning.jobs.retrieve(job.id).status == "queued"
    with pytest.raises(openai.AuthenticationError) as unknown:
        OpenAI(base_url=f"{server}/v1", api_key="tl_not-a-token", max_retries=0).models.list()
    assert unknown.value.body["code"] == "invalid_api_key"


def test_jobs_page_newest_first_and_cancel_at_once(acme, server, workers):
    client = openai_client(server, acme)
    file = client.files.create(file=("colours.jsonl", jsonl(chat_rows())), purpose="fine-tune")
    ids = [
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=file.id, extra_body={"queue": workers.queue}).id
        for _ in range(3)
    ]

    first = client.fine_tuning.jobs.list(limit=2)
    assert [job.id for job in first.data] == ids[::-1][:2] and first.has_more
    assert [job.id for job in client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id).data] == [ids[0]]
    assert [job.id for job in client.fine_tuning.jobs.list(limit=2)] == ids[::-1], "the package follows the pages"

    cancelled = client.fine_tuning.jobs.cancel(ids[1])
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert client.fine_tuning.jobs.cancel(ids[1]).status == "cancelled", "asking twice is no error"
    assert client.fine_tuning.jobs.list_events(ids[1]).data[0].message == "Job cancelled before it started"
    with pytest.raises(openai.ConflictError) as in_use:
        client.files.delete(file.id)
    assert ids[0] in in_use.value.body["message"]
    for job_id in (ids[0], ids[2]):
        client.fine_tuning.jobs.cancel(job_id)
    assert client.files.delete(file.id).deleted is True
    assert client.files.list().data == []


@pytest.mark.parametrize(
    "change, param, message",
    [
        ({"training_file": "file-999999"}, "training_file", "dataset not found"),
        ({"training_file": "colours.jsonl"}, "training_file", "no such file"),
        ({"model": "no-such-model"}, "model", "is not in the models directory"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "greater than 0"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 0}}}},
            "method.supervised.hyperparameters.batch_size",
            "greater than or equal to 1",
        ),
        ({"method": {"type": "reinforcement"}}, "method.type", "method type 'supervised' or 'dpo'"),
        ({"extra_body": {"method": "qlora", "lora": {"r": 0}}}, "lora.r", "greater than or equal to 1"),
        ({"extra_body": {"unknown_knob": 1}}, "unknown_knob", "Extra inputs are not permitted"),
        ({"extra_body": {"packing": "sometimes"}}, "packing", "'auto', 'on' or 'off'"),
        ({"suffix": "has:colons"}, "suffix", "should match pattern"),
    ],
)
def test_bad_job_requests_are_refused_beside_their_parameter(acme, server, change, param, message):
    client = openai_client(server, acme)
    file = client.files.create(file=("colours.jsonl", jsonl(chat_rows())), purpose="fine-tune")
    request = {"model": TINY_MODEL, "training_file": file.id, **change}
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(**request)
    assert refused.value.body["param"] == param and message in refused.value.body["message"], refused.value.body
    assert client.fine_tuning.jobs.list().data == []
