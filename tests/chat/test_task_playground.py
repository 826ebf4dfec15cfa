"""The playground for taggers (NER), question answerers and encoder-decoders: the job is offered as
one, a sentence typed there comes back with its entities, a question on a context with its answer
span, an input with its generated target (answered by the inference worker's own function, run in
this process, on a tiny BERT or T5 trained for the module), and what is not such a job is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.blobs import blob_store
from app.core.tables import Artifact, Completion, JobState
from tests.chat.test_playground import finished_job, inference_worker_in_this_process, page_data
from tests.ml.test_tasks import ner_rows, qa_rows, seq2seq_rows

BERT, T5 = "tiny-bert", "tiny-t5"


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


def _trained(shared_models_dir, folder: Path, rows: list[dict], **spec) -> Path:
    """The final folder of a run on `rows` (the base model in the shared models directory)."""
    from app.contract.spec import TrainingSpec
    from worker.ml import MemoryReporter, train

    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settled = {"warmup_ratio": 0.0, "lr_scheduler": "constant", "eval_split": 0.25}  # as tests/ml/test_tasks.py
    result = train(
        TrainingSpec(**settled, **spec),
        train_file=data,
        output_dir=folder / "run",
        reporter=MemoryReporter(),
        models_dir=shared_models_dir,
    )
    return result.final_dir


@pytest.fixture(scope="module")
def trained_answerer(shared_models_dir, tmp_path_factory) -> Path:
    """A LoRA question answerer that finds the city in a context, on a tiny BERT."""
    from worker.ml.tiny import make_tiny_encoder

    if not (shared_models_dir / BERT).exists():
        make_tiny_encoder(shared_models_dir / BERT)
    folder = tmp_path_factory.mktemp("answerer")
    return _trained(
        shared_models_dir,
        folder,
        qa_rows(80),
        base_model=BERT,
        method="lora",
        max_steps=120,
        learning_rate=5e-3,
        batch_size=8,
        max_seq_length=64,
        seed=2,
    )


@pytest.fixture(scope="module")
def trained_writer(shared_models_dir, tmp_path_factory) -> Path:
    """A tiny T5 fully fine-tuned to name the colour of a thing (its whole weights, no adapter)."""
    from worker.ml.tiny import make_tiny_seq2seq

    if not (shared_models_dir / T5).exists():
        make_tiny_seq2seq(shared_models_dir / T5)
    folder = tmp_path_factory.mktemp("writer")
    return _trained(
        shared_models_dir,
        folder,
        seq2seq_rows(48),
        base_model=T5,
        method="full",
        max_steps=40,
        learning_rate=3e-3,
        batch_size=8,
        max_seq_length=64,
    )


def task_job(db, account, trained: Path, rows: list[dict], base_model: str, weights: str = "adapter"):
    """A finished job of `rows` on `base_model` whose final weights are the folder `trained`."""
    job = finished_job(db, account, rows=rows, base_model=base_model, weights=weights)
    artifact = db.scalar(select(Artifact).where(Artifact.job_id == job.id))
    shutil.copytree(trained, blob_store().path(artifact.blob_key))
    return job


def tagger_job(db, account, trained: Path):
    return task_job(db, account, trained, ner_rows(64), BERT)


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


def test_a_question_answerer_job_finds_the_answer_in_a_context(
    acme, app, db, trained_answerer, shared_models_dir, monkeypatch
):
    from peft import AutoPeftModelForQuestionAnswering
    from transformers import AutoTokenizer

    from worker.ml.token_tasks import predict_answers

    job = task_job(db, acme, trained_answerer, qa_rows(80), BERT)
    offered = page_data(acme.client.get("/playground").text)["jobs"]
    assert [(choice["id"], choice["task"]) for choice in offered] == [(job.id, "question_answering")]

    worker = inference_worker_in_this_process(db, requests=2)
    asked = [
        {"question": "Which city?", "context": "then a very Rome also with."},
        {"question": "Which city?", "context": "a was Acme today."},
    ]
    responses = [acme.client.post(f"/api/jobs/{job.id}/predict", json=inputs) for inputs in asked]
    worker.join(timeout=30)
    assert [response.status_code for response in responses] == [200, 200], responses[0].text
    answers = [response.json() for response in responses]

    # The same spans and scores as the job's adapter loaded the ordinary way (its base: tiny-bert, here).
    monkeypatch.chdir(shared_models_dir)
    reloaded = AutoPeftModelForQuestionAnswering.from_pretrained(trained_answerer).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained_answerer)
    expected = predict_answers(reloaded, tokenizer, [(row["question"], row["context"]) for row in asked])
    for answer, inputs, prediction in zip(answers, asked, expected, strict=True):
        assert answer["task"] == "question_answering"
        assert (answer["answer"], answer["start"]) == (prediction.text, prediction.start)
        assert answer["score"] == pytest.approx(prediction.score, abs=1e-5) and 0 < answer["score"] <= 1
        if answer["answer"]:  # a span of the context, where it says
            assert inputs["context"][answer["start"] :].startswith(answer["answer"])
    assert answers[0]["answer"], "the city is found (the tiny model learns it)"
    requests = db.scalars(select(Completion.request).order_by(Completion.id)).all()
    assert requests == [{"kind": "predict", **inputs} for inputs in asked]


def test_a_question_answerer_needs_a_context(acme, app, db, trained_answerer):
    job = task_job(db, acme, trained_answerer, qa_rows(80), BERT)
    worker = inference_worker_in_this_process(db)
    response = acme.client.post(f"/api/jobs/{job.id}/predict", json={"question": "Which city?"})
    worker.join(timeout=30)
    assert response.status_code == 500 and response.json()["detail"] == 'give the "context" to try the model on'


def test_an_encoder_decoder_job_writes_the_target_of_an_input(acme, app, db, trained_writer, shared_models_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from worker.ml.seq2seq import generate

    job = task_job(db, acme, trained_writer, seq2seq_rows(48), T5, weights="model")
    offered = page_data(acme.client.get("/playground").text)["jobs"]
    assert [(choice["id"], choice["task"]) for choice in offered] == [(job.id, "seq2seq")]

    worker = inference_worker_in_this_process(db, requests=2)
    written = [
        acme.client.post(f"/api/jobs/{job.id}/predict", json={"text": f"what colour is the {thing}"})
        for thing in ("sky", "snow")
    ]
    worker.join(timeout=30)
    assert [response.status_code for response in written] == [200, 200], written[0].text
    assert [response.json() for response in written] == [
        {"task": "seq2seq", "target": "blue"},
        {"task": "seq2seq", "target": "white"},
    ]
    model = AutoModelForSeq2SeqLM.from_pretrained(trained_writer).eval()
    inputs = ["what colour is the sky", "what colour is the snow"]
    assert generate(model, AutoTokenizer.from_pretrained(trained_writer), inputs) == ["blue", "white"]


@pytest.fixture
def tiny_bert(shared_models_dir) -> str:
    """A tiny BERT in the shared models directory (NER data trains no other base); its name."""
    from worker.ml.tiny import make_tiny_encoder

    if not (shared_models_dir / BERT).exists():
        make_tiny_encoder(shared_models_dir / BERT)
    return BERT


def test_predict_is_refused_for_what_is_not_a_finished_task_model(acme, make_account, db, tiny_bert):
    chat_job = finished_job(db, acme)
    refused = acme.client.post(f"/api/jobs/{chat_job.id}/predict", json={"text": "Ada"})
    assert refused.status_code == 409 and refused.json()["detail"] == (
        "this job's model chats or labels text: it was not trained to tag, answer from a context or write a target"
    )
    nothing = finished_job(
        db, acme, state=JobState.failed, weights=None, rows=ner_rows(10, seed=5), base_model=tiny_bert
    )
    refused = acme.client.post(f"/api/jobs/{nothing.id}/predict", json={"text": "Ada"})
    assert refused.json()["detail"] == "the job left no model to try: it saved no weights"
    job = finished_job(db, acme, rows=ner_rows(12, seed=6), base_model=tiny_bert)
    other_team = make_account(team="globex").client.post(f"/api/jobs/{job.id}/predict", json={"text": "Ada"})
    assert other_team.status_code == 404, "another team's job is not found"
    assert acme.client.post(f"/api/jobs/{job.id}/predict", json={"text": ""}).status_code == 422
    assert acme.client.post(f"/api/jobs/{job.id}/predict", json={"txt": "Ada"}).status_code == 422
