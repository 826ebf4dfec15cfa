"""The playground page, the merge request and the classify request, without worker processes:
what a user sees and is told before any model runs, and a classifier's answer given by the
inference worker's own function run in this process."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.blobs import blob_store
from app.core.database import session_scope
from app.core.tables import Artifact, Completion, CompletionState, Job, JobEvent, JobState, WorkerProcess
from app.jobs.states import transition
from tests.helpers import TINY_MODEL, add_dataset, browser_sign_in, chat_rows, tiny_spec, wait_for


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="Acme Labs", email="ada@acme.test")


_DATASETS = itertools.count(40)


def finished_job(db, account, *, state=JobState.succeeded, weights: str | None = "adapter", rows=None, **spec) -> Job:
    """A job as a worker leaves it: finished, with its final weights (or a checkpoint) recorded."""
    dataset = add_dataset(db, account, rows or chat_rows(next(_DATASETS)))  # each its own content
    response = account.client.post(
        "/api/jobs",
        json={"spec": tiny_spec(**spec), "dataset_id": dataset.id, "suffix": "v1", "queue": "nobody-serves-this"},
    )
    assert response.status_code == 201, response.text
    job = db.get(Job, response.json()["id"])
    transition(db, job, JobState.running)
    if state == JobState.cancelled:
        transition(db, job, JobState.cancelling)
    transition(db, job, state, step=6)
    if weights is not None:
        db.add(Artifact(job_id=job.id, kind=weights, step=6, blob_key=f"jobs/{job.id}/{weights}"))
    db.commit()
    return job


def page_data(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="page-data">(.*?)</script>', html, re.DOTALL)[1])


CLASSIFIER_ROWS = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(8)]


def test_the_playground_offers_finished_jobs_that_left_a_model_and_tells_classifiers_apart(acme, app, db):
    succeeded = finished_job(db, acme)
    cancelled = finished_job(db, acme, state=JobState.cancelled, weights="checkpoint")
    classifier = finished_job(db, acme, rows=CLASSIFIER_ROWS)
    finished_job(db, acme, state=JobState.failed, weights=None)  # nothing to try
    browser = TestClient(app)
    browser_sign_in(browser, acme.email)

    page = browser.get("/playground", params={"job": cancelled.id})
    assert page.status_code == 200
    data = page_data(page.text)
    assert [job["id"] for job in data["jobs"]] == [classifier.id, cancelled.id, succeeded.id]
    assert data["chosen"] == cancelled.id
    assert [job["classifier"] for job in data["jobs"]] == [True, False, False]
    assert data["jobs"][2]["model"] == f"ft:{TINY_MODEL}:acme-labs:v1:ftjob-{succeeded.id}"
    assert data["jobs"][1]["model"] == f"ft:{TINY_MODEL}:acme-labs:v1:ftjob-{cancelled.id}:ckpt-step-6"
    assert data["jobs"][1]["base_model"] == TINY_MODEL and data["jobs"][1]["checkpoint"] is True
    assert 'static/js/playground.js"></script>' in page.text
    assert "style=" not in page.text and browser.get("/static/js/playground.js").status_code == 200


def test_an_empty_playground_says_what_to_do(acme, app):
    browser = TestClient(app)
    browser_sign_in(browser, acme.email)
    page = browser.get("/playground")
    assert "No finished job to try yet" in page.text and 'href="/jobs/new"' in page.text


def test_a_merge_is_queued_once_asked_and_answered_when_built(acme, db):
    job = finished_job(db, acme)
    response = acme.client.post(f"/api/jobs/{job.id}/merge")
    assert response.status_code == 202 and response.json() == {"status": "queued", "artifact": None}
    last = db.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.seq.desc())).first()
    assert last.message == f"Merged model requested by {acme.email}" and last.data == {"merge": "queued"}

    db.add(Artifact(job_id=job.id, kind="merged", step=6, blob_key=f"jobs/{job.id}/merged"))
    db.commit()
    again = acme.client.post(f"/api/jobs/{job.id}/merge")
    assert (
        again.status_code == 200 and again.json()["status"] == "ready" and again.json()["artifact"]["kind"] == "merged"
    )


def test_merges_are_refused_where_there_is_nothing_to_merge(acme, make_account, db):
    full = finished_job(db, acme, method="full", weights="model")
    assert acme.client.post(f"/api/jobs/{full.id}/merge").json()["detail"].startswith("full fine-tuning has no adapter")
    empty = finished_job(db, acme, state=JobState.failed, weights=None)
    assert acme.client.post(f"/api/jobs/{empty.id}/merge").json()["detail"] == "the job left no adapter to merge"
    running = db.get(
        Job,
        acme.client.post(
            "/api/jobs", json={"spec": tiny_spec(), "dataset_id": full.dataset_id, "queue": "nobody"}
        ).json()["id"],
    )
    refused = acme.client.post(f"/api/jobs/{running.id}/merge")
    assert refused.status_code == 409 and "once it has finished" in refused.json()["detail"]

    job = finished_job(db, acme)
    viewer = make_account(team="Acme Labs", role="viewer", email="vic@acme.test")
    assert viewer.client.post(f"/api/jobs/{job.id}/merge").status_code == 403
    assert make_account(team="globex").client.post(f"/api/jobs/{job.id}/merge").status_code == 404


# -- classifier jobs: /api/jobs/{id}/classify ---------------------------------------------

WARM, COLD = ["sun", "fire", "summer", "hot"], ["snow", "ice", "winter", "cold"]


def warm_and_cool_rows(count: int = 64) -> list[dict]:
    """Text+label rows a tiny classifier learns in a few seconds: the last word decides."""
    rng = random.Random(0)
    filler = ["the", "a", "day", "was", "very", "and", "today", "really"]
    rows = []
    for i in range(count):
        label, words = ("warm", WARM) if i % 2 else ("cool", COLD)
        rows.append({"text": " ".join(rng.sample(filler, 4) + [rng.choice(words)]), "label": label})
    return rows


@pytest.fixture(scope="module")
def trained_classifier(shared_models_dir, tmp_path_factory) -> Path:
    """The final folder of a LoRA classifier of warm and cool texts, trained once for the module."""
    from app.contract.spec import TrainingSpec
    from worker.ml import MemoryReporter, train

    folder = tmp_path_factory.mktemp("classifier")
    data = folder / "labels.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in warm_and_cool_rows()))
    spec = TrainingSpec(**tiny_spec(max_steps=40, learning_rate=3e-3, max_seq_length=64, warmup_ratio=0.0))
    result = train(
        spec, train_file=data, output_dir=folder / "run", reporter=MemoryReporter(), models_dir=shared_models_dir
    )
    return result.final_dir


def classifier_job(db, account, trained: Path, **kwargs) -> Job:
    """A finished classifier job whose weights in the blob store are `trained`."""
    job = finished_job(db, account, rows=warm_and_cool_rows(), **kwargs)
    artifact = db.scalar(select(Artifact).where(Artifact.job_id == job.id))
    shutil.copytree(trained, blob_store().path(artifact.blob_key))
    return job


def inference_worker_in_this_process(db, requests: int = 1) -> threading.Thread:
    """An inference worker registered as serving the queue, answering the next `requests`
    requests with the worker's own function, here."""
    from worker.chat_job import run_completion

    db.add(WorkerProcess(name="celery@here", hostname="here", pid=1, queues="inference"))
    db.commit()

    def queued() -> int | None:
        with session_scope() as session:
            return session.scalar(select(Completion.id).where(Completion.state == CompletionState.queued))

    def serve() -> None:
        for _ in range(requests):
            run_completion(wait_for(queued, timeout=60, message="a request"))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_classifier_job_gives_the_probability_of_each_label_for_a_text(acme, db, trained_classifier):
    job = classifier_job(db, acme, trained_classifier)
    worker = inference_worker_in_this_process(db, requests=2)

    hot = acme.client.post(f"/api/jobs/{job.id}/classify", json={"text": "the day was really hot"})
    assert hot.status_code == 200, hot.text
    labels = hot.json()["labels"]
    assert [label["label"] for label in labels] == ["warm", "cool"], "most probable first"
    assert labels[0]["probability"] > 0.8 and sum(label["probability"] for label in labels) == pytest.approx(1.0)
    assert hot.json()["tokens"] > 3 and hot.json()["truncated"] is False

    cold = acme.client.post(f"/api/jobs/{job.id}/classify", json={"text": "today was very cold"})
    assert [label["label"] for label in cold.json()["labels"]] == ["cool", "warm"]
    worker.join(timeout=30)
    db.expire_all()
    requests = db.scalars(select(Completion).order_by(Completion.id)).all()
    assert [request.request for request in requests] == [
        {"kind": "classify", "text": "the day was really hot"},
        {"kind": "classify", "text": "today was very cold"},
    ]
    assert requests[0].model == f"ft:{TINY_MODEL}:acme-labs:v1:ftjob-{job.id}"


def test_classify_is_refused_for_what_is_not_a_finished_classifier(acme, make_account, db):
    def classify(account, job_id: int, text: str = "hot"):
        return account.client.post(f"/api/jobs/{job_id}/classify", json={"text": text})

    chat_job = finished_job(db, acme)
    refused = classify(acme, chat_job.id)
    assert refused.status_code == 409 and refused.json()["detail"] == (
        "this job's model chats: it was not trained to label text"
    )
    nothing = finished_job(db, acme, state=JobState.failed, weights=None, rows=warm_and_cool_rows(62))
    assert classify(acme, nothing.id).json()["detail"] == "the job left no classifier to try: it saved no weights"
    job = finished_job(db, acme, rows=warm_and_cool_rows())
    assert classify(make_account(team="globex"), job.id).status_code == 404, "another team's job is not found"
    assert classify(acme, 10**9).status_code == 404
    for text in ("", "x" * 100_001):
        assert classify(acme, job.id, text).status_code == 422
    no_worker = classify(acme, job.id)
    assert no_worker.status_code == 503 and "No inference worker is running" in no_worker.json()["detail"]
    assert db.scalar(select(Completion)) is None, "nothing is stored for a refused request"


# -- the playground's conversations: /v1/chat/completions with fit_context ----------------


def test_a_conversation_too_long_for_the_model_loses_its_oldest_turns_when_asked_and_says_how_many(acme, db):
    worker = inference_worker_in_this_process(db, requests=3)
    long_turn = "red green blue yellow " * 160  # about 1600 tokens: three of them overflow 4096
    messages = []
    for i in range(3):
        messages += [{"role": "user", "content": f"{i} {long_turn}"}, {"role": "assistant", "content": "Blue."}]
    messages.append({"role": "user", "content": "What colour is the sky?"})

    def chat(**extra):
        body = {"model": TINY_MODEL, "messages": messages, "max_tokens": 5, "temperature": 0, **extra}
        return acme.client.post("/v1/chat/completions", json=body)

    refused = chat()
    assert refused.status_code == 500 and "this model reads at most 4096" in refused.json()["error"]["message"]
    fitted = chat(fit_context=True)
    assert fitted.status_code == 200, fitted.text
    usage = fitted.json()["usage"]
    assert usage["dropped_messages"] == 2 and usage["prompt_tokens"] + 5 <= 4096
    short = acme.client.post(
        "/v1/chat/completions",
        json={"model": TINY_MODEL, "messages": messages[-1:], "max_tokens": 5, "fit_context": True},
    )
    assert short.json()["usage"]["dropped_messages"] == 0
    worker.join(timeout=30)


def test_a_classifier_whose_weights_are_gone_is_answered_with_the_workers_reason(acme, db):
    job = finished_job(db, acme, rows=warm_and_cool_rows(60))  # its weights were never written to the store
    worker = inference_worker_in_this_process(db)
    response = acme.client.post(f"/api/jobs/{job.id}/classify", json={"text": "hot"})
    assert response.status_code == 500 and response.json()["detail"] == (
        "the fine-tuned weights are no longer in the store"
    )
    worker.join(timeout=30)
    db.expire_all()
    assert db.scalar(select(Completion.state)) == CompletionState.failed
