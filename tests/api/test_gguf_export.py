"""GGUF export through the API with a real worker on Redis and Postgres: a job trained once,
exported at Q8_0 (the worker merges the adapter first), downloaded as a zip with the Ollama
Modelfile, and read back by transformers; a Hub push aimed at an unreachable Hub is refused
cleanly, without the token in any event, and the export stands. Then what the app refuses
before anything is queued."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import pytest

from app.core.tables import JobState
from tests.chat.test_playground import page_data
from tests.helpers import (
    TINY_MODEL,
    Account,
    SharedServices,
    add_dataset,
    add_job,
    chat_rows,
    forget_cached_settings,
    free_port,
    jsonl,
    once,
    tiny_spec,
    wait_for,
)
from tests.ml.test_tasks import ner_rows, qa_rows, seq2seq_rows

TOKEN = "hf_tunelab_test_token_never_logged"
REPO = "acme/colours-gguf"


@dataclass
class Trained:
    account: Account
    job_id: int

    def api(self, method: str, path: str, **kwargs):
        return self.account.client.request(method, f"/api/jobs/{self.job_id}{path}", **kwargs)

    def events(self) -> list[dict]:
        return self.api("GET", "/events", params={"limit": 1000}).json()

    def artifact(self, kind: str) -> dict | None:
        return next((a for a in self.api("GET", "/artifacts").json() if a["kind"] == kind), None)

    @once
    def export_q8_0(self):
        """Ask for a Q8_0 export pushed to REPO and wait for the worker to record it: the answer
        to the request, and the export."""
        requested = self.api("POST", "/exports/gguf", json={"quantization": "q8_0", "hub_repo": REPO})
        return requested, wait_for(lambda: self.artifact("gguf-q8_0"), timeout=240, interval=0.5, message="the export")


@pytest.fixture(scope="class")
def trained(migrated_database, shared_models_dir, redis_url, tmp_path_factory):
    services = SharedServices(
        migrated_database,
        tmp_path_factory.mktemp("data"),
        shared_models_dir,
        redis_url,
        TUNELAB_HF_TOKEN=TOKEN,
        TUNELAB_HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",  # nothing listens there: the Hub is unreachable
        HF_HUB_OFFLINE="0",
    )
    with services:
        services.workers.start()
        acme = services.account(team="acme")
        dataset = acme.client.post("/api/datasets", files={"file": ("colours.jsonl", jsonl(chat_rows()))}).json()
        body = {"spec": tiny_spec(max_steps=6), "dataset_id": dataset["id"], "queue": services.workers.queue}
        response = acme.client.post("/api/jobs", json=body)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

        def finished():
            state = acme.client.get(f"/api/jobs/{job_id}").json()["state"]
            return state if state in ("succeeded", "failed", "cancelled") else None

        assert wait_for(finished, timeout=300, interval=0.5, message="the job to finish") == "succeeded"
        yield Trained(acme, job_id)


class TestGgufExportOfATrainedJob:
    def test_export_merges_converts_and_the_download_loads_back(self, trained, tmp_path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        requested, exported = trained.export_q8_0()
        assert requested.status_code == 202 and requested.json() == {"status": "queued", "artifact": None}
        assert exported["meta"]["quantization"] == "q8_0" and exported["meta"]["chat_template"] == "ChatML"

        archive = trained.api("GET", f"/artifacts/{exported['id']}/archive")
        assert archive.status_code == 200
        assert f"tunelab-job-{trained.job_id}-gguf-q8_0.zip" in archive.headers["content-disposition"]
        zipped = zipfile.ZipFile(io.BytesIO(archive.content))
        top = f"tunelab-job-{trained.job_id}-gguf-q8_0"
        assert {f"{top}/model.gguf", f"{top}/Modelfile", f"{top}/README.md"} <= set(zipped.namelist())
        zipped.extractall(tmp_path / "gguf")
        assert "FROM ./model.gguf" in (tmp_path / "gguf" / top / "Modelfile").read_text()

        merged = trained.artifact("merged")
        assert merged is not None, "the worker built the merged model on the way"
        zipfile.ZipFile(io.BytesIO(trained.api("GET", f"/artifacts/{merged['id']}/archive").content)).extractall(
            tmp_path / "merged"
        )
        merged_dir = tmp_path / "merged" / f"tunelab-job-{trained.job_id}-merged"
        ids = AutoTokenizer.from_pretrained(merged_dir)("The sky is blue.", return_tensors="pt").input_ids
        with torch.no_grad():
            expected = AutoModelForCausalLM.from_pretrained(merged_dir)(ids).logits
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf" / top, gguf_file="model.gguf")(ids).logits
        assert (loaded - expected).abs().max().item() < 0.3
        assert torch.equal(loaded.argmax(-1), expected.argmax(-1))

    def test_progress_is_told_as_events_and_the_push_is_refused_cleanly(self, trained):
        trained.export_q8_0()
        wait_for(
            lambda: any(e["data"].get("hub") == "refused" for e in trained.events()),
            timeout=120,
            message="the push's outcome",
        )
        events = trained.events()
        stages = [e["data"]["gguf"] for e in events if "gguf" in e["data"]]
        assert stages[0] == "queued" and stages[1] == "started" and stages[-1] == "done"
        assert "progress" in stages and "failed" not in stages
        merge = [e["data"]["merge"] for e in events if "merge" in e["data"]]
        assert merge[0] == "started" and merge[-1] == "done", "the worker merged the adapter first"
        refused = next(e for e in events if e["data"].get("hub") == "refused")
        assert refused["level"] == "warning"
        assert refused["message"].startswith(
            f"Not pushed to {REPO}: the Hugging Face Hub refused the push or could not be reached"
        )
        assert all(TOKEN not in e["message"] and TOKEN not in str(e["data"]) for e in events)

    def test_asking_again_answers_the_export_and_another_quantisation_reuses_the_merge(self, trained):
        trained.export_q8_0()
        again = trained.api("POST", "/exports/gguf", json={"quantization": "q8_0"})
        assert again.status_code == 200 and again.json()["artifact"]["kind"] == "gguf-q8_0"
        f16 = trained.api("POST", "/exports/gguf", json={"quantization": "f16"})
        assert f16.status_code == 202
        wait_for(lambda: trained.artifact("gguf-f16"), timeout=180, interval=0.5, message="the F16 export")
        merges = [e for e in trained.events() if e["data"].get("merge") == "started"]
        assert len(merges) == 1, "the merged model is built once and reused"
        assert trained.artifact("gguf-f16")["size_bytes"] > trained.artifact("gguf-q8_0")["size_bytes"]


# ---- refused by the app, before anything is queued (no worker) ------------------------------


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme", role="member")


@pytest.fixture
def dataset(db, acme):
    return add_dataset(db, acme, chat_rows(6))


def test_an_unfinished_job_or_an_unknown_quantisation_is_refused(acme, db, dataset):
    running = add_job(db, acme, JobState.running, dataset=dataset)
    response = acme.client.post(f"/api/jobs/{running.id}/exports/gguf", json={"quantization": "q8_0"})
    assert response.status_code == 409 and "export it once it has finished" in response.text
    done = add_job(db, acme, JobState.succeeded, dataset=dataset)
    response = acme.client.post(f"/api/jobs/{done.id}/exports/gguf", json={"quantization": "q3_k"})
    assert response.status_code == 422
    response = acme.client.post(f"/api/jobs/{done.id}/exports/gguf", json={"quantization": "q8_0"})
    assert response.status_code == 409 and "no weights to export" in response.text


def _with_adapter(db, job):
    from app.core.blobs import blob_store
    from app.core.tables import Artifact, ArtifactKind

    blob_store().path(f"jobs/{job.id}/final").mkdir(parents=True)
    db.add(Artifact(job_id=job.id, kind=ArtifactKind.adapter, step=6, blob_key=f"jobs/{job.id}/final"))
    db.commit()
    return job


def test_a_base_model_that_is_not_llama_is_refused_with_the_reason(
    acme, db, dataset, models_env, tmp_path, monkeypatch
):
    import shutil

    from worker.ml.tiny import make_tiny_model

    models = tmp_path / "models"
    shutil.copytree(models_env / TINY_MODEL, models / TINY_MODEL)
    make_tiny_model(models / "tiny-qwen", arch="qwen2")
    monkeypatch.setenv("TUNELAB_MODELS_DIR", str(models))
    forget_cached_settings()
    job = _with_adapter(db, add_job(db, acme, JobState.succeeded, dataset=dataset))
    job.base_model = "tiny-qwen"
    db.commit()
    response = acme.client.post(f"/api/jobs/{job.id}/exports/gguf", json={"quantization": "f16"})
    assert response.status_code == 422
    assert "GGUF export converts the Llama family (LlamaForCausalLM); this model is Qwen2ForCausalLM" in response.text


def test_a_classifier_job_is_refused(acme, db):
    rows = [{"text": f"text number {i}", "label": "yes" if i % 2 else "no"} for i in range(8)]
    job = _with_adapter(db, add_job(db, acme, JobState.succeeded, dataset=add_dataset(db, acme, rows)))
    response = acme.client.post(f"/api/jobs/{job.id}/exports/gguf", json={"quantization": "q8_0"})
    assert response.status_code == 409 and "trains a text classifier" in response.text


def test_a_push_needs_a_token_and_a_well_formed_repository(acme, db, dataset, monkeypatch):
    job = _with_adapter(db, add_job(db, acme, JobState.succeeded, dataset=dataset))
    url = f"/api/jobs/{job.id}/exports/gguf"
    monkeypatch.delenv("TUNELAB_HF_TOKEN", raising=False)
    forget_cached_settings()
    response = acme.client.post(url, json={"quantization": "q4_0", "hub_repo": REPO})
    assert response.status_code == 409 and "TUNELAB_HF_TOKEN" in response.text
    monkeypatch.setenv("TUNELAB_HF_TOKEN", TOKEN)
    forget_cached_settings()
    for bad in ("../../etc", "no-owner", "a/b/c", "acme/..x/y"):
        response = acme.client.post(url, json={"quantization": "q4_0", "hub_repo": bad})
        assert response.status_code == 422, bad
    assert TOKEN not in response.text


def test_another_teams_job_is_not_found(acme, make_account, db, dataset):
    job = _with_adapter(db, add_job(db, acme, JobState.succeeded, dataset=dataset))
    other = make_account(team="globex")
    response = other.client.post(f"/api/jobs/{job.id}/exports/gguf", json={"quantization": "q8_0"})
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("rows", "trains"),
    [
        (ner_rows(8), "a token classifier (NER)"),
        (qa_rows(8), "an extractive question answerer"),
        (seq2seq_rows(8), "an encoder-decoder (seq2seq)"),
    ],
)
def test_a_tagger_question_answerer_or_seq2seq_job_is_refused_and_offered_no_export(acme, db, rows, trains):
    job = _with_adapter(db, add_job(db, acme, JobState.succeeded, dataset=add_dataset(db, acme, rows)))
    response = acme.client.post(f"/api/jobs/{job.id}/exports/gguf", json={"quantization": "q8_0"})
    assert response.status_code == 422
    assert f"the job trains {trains}: GGUF export converts causal language models" in response.text
    page = page_data(acme.client.get(f"/jobs/{job.id}").text)
    assert page["gguf_refusal"].startswith(f"the job trains {trains}")


def test_a_language_model_job_is_offered_the_export(acme, db, dataset):
    job = _with_adapter(db, add_job(db, acme, JobState.succeeded, dataset=dataset))
    assert page_data(acme.client.get(f"/jobs/{job.id}").text)["gguf_refusal"] is None
