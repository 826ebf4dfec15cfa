"""The playground for taggers (NER): the job is offered as one, a sentence typed there comes back
with its entities (answered by the inference worker's own function, run in this process, on a
tiny BERT trained for the module), and what is not a tagger's job is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.blobs import blob_store
from app.core.tables import Artifact, Completion, JobState
from tests.chat.test_playground import finished_job, inference_worker_in_this_process, page_data
from tests.ml.test_tasks import ner_rows

BERT = "tiny-bert"


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="Acme Labs", email="ada@acme.test")


@pytest.fixture(scope="module")
def trained_tagger(shared_models_dir, tmp_path_factory) -> Path:
    """The final folder of a LoRA tagger of people, places and companies on a tiny BERT (added to the
    shared models directory, where the inference worker finds its base)."""
    from app.contract.spec import TrainingSpec
    from worker.ml import MemoryReporter, train
    from worker.ml.tiny import make_tiny_encoder

    if not (shared_models_dir / BERT).exists():
        make_tiny_encoder(shared_models_dir / BERT)
    folder = tmp_path_factory.mktemp("tagger")
    data = folder / "ner.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ner_rows(64)))
    spec = TrainingSpec(
        base_model=BERT, method="lora", max_steps=60, learning_rate=5e-3, batch_size=8, max_seq_length=64, seed=1
    )
    result = train(
        spec, train_file=data, output_dir=folder / "run", reporter=MemoryReporter(), models_dir=shared_models_dir
    )
    return result.final_dir


def tagger_job(db, account, trained: Path):
    job = finished_job(db, account, rows=ner_rows(64), base_model=BERT)
    artifact = db.scalar(select(Artifact).where(Artifact.job_id == job.id))
    shutil.copytree(trained, blob_store().path(artifact.blob_key))
    return job


def test_a_tagger_job_marks_the_entities_of_a_sentence(acme, app, db, trained_tagger, shared_models_dir):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from worker.ml.loading import classifier_kwargs
    from worker.ml.token_tasks import predict_tags

    job = tagger_job(db, acme, trained_tagger)
    offered = page_data(acme.client.get("/playground").text)["jobs"]
    assert [(choice["id"], choice["task"], choice["classifier"]) for choice in offered] == [
        (job.id, "token_classification", False)
    ]

    worker = inference_worker_in_this_process(db)
    response = acme.client.post(f"/api/jobs/{job.id}/predict", json={"text": "Ada Lovelace lives in Rome, with Acme."})
    assert response.status_code == 200, response.text
    answer = response.json()
    worker.join(timeout=30)
    words = ["Ada", "Lovelace", "lives", "in", "Rome", ",", "with", "Acme", "."]
    assert answer["task"] == "token_classification" and answer["tokens"] == words

    # What the job's own model predicts, loaded here the ordinary way.
    from peft import PeftModel

    names = json.loads((trained_tagger / "class_names.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(trained_tagger)
    base = AutoModelForTokenClassification.from_pretrained(
        shared_models_dir / BERT, **classifier_kwargs(names, tokenizer.pad_token_id)
    )
    expected = predict_tags(PeftModel.from_pretrained(base, trained_tagger).eval(), tokenizer, [words])[0]
    assert answer["tags"] == expected
    assert answer["entities"] and all(
        entity["text"] == " ".join(words[entity["start"] : entity["end"]])
        and expected[entity["start"]][2:] == entity["type"]
        for entity in answer["entities"]
    )
    assert db.scalar(select(Completion.request)) == {
        "kind": "predict",
        "text": "Ada Lovelace lives in Rome, with Acme.",
    }


def test_predict_is_refused_for_what_is_not_a_finished_task_model(acme, make_account, db):
    chat_job = finished_job(db, acme)
    refused = acme.client.post(f"/api/jobs/{chat_job.id}/predict", json={"text": "Ada"})
    assert refused.status_code == 409 and refused.json()["detail"] == (
        "this job's model chats or labels text: it was not trained to tag, answer from a context or write a target"
    )
    nothing = finished_job(db, acme, state=JobState.failed, weights=None, rows=ner_rows(10, seed=5))
    refused = acme.client.post(f"/api/jobs/{nothing.id}/predict", json={"text": "Ada"})
    assert refused.json()["detail"] == "the job left no model to try: it saved no weights"
    job = finished_job(db, acme, rows=ner_rows(12, seed=6))
    other_team = make_account(team="globex").client.post(f"/api/jobs/{job.id}/predict", json={"text": "Ada"})
    assert other_team.status_code == 404, "another team's job is not found"
    assert acme.client.post(f"/api/jobs/{job.id}/predict", json={"text": ""}).status_code == 422
    assert acme.client.post(f"/api/jobs/{job.id}/predict", json={"txt": "Ada"}).status_code == 422
