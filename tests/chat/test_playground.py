"""The playground page and the merge request, without workers: what a user sees and is told
before any model runs."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.tables import Artifact, Job, JobEvent, JobState
from app.jobs.states import transition
from tests.helpers import TINY_MODEL, add_dataset, browser_sign_in, chat_rows, tiny_spec


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


def test_the_playground_offers_finished_jobs_that_can_chat(acme, app, db):
    succeeded = finished_job(db, acme)
    cancelled = finished_job(db, acme, state=JobState.cancelled, weights="checkpoint")
    finished_job(db, acme, rows=[{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(8)])  # a classifier
    finished_job(db, acme, state=JobState.failed, weights=None)  # nothing to chat with
    browser = TestClient(app)
    browser_sign_in(browser, acme.email)

    page = browser.get("/playground", params={"job": cancelled.id})
    assert page.status_code == 200
    data = page_data(page.text)
    assert [job["id"] for job in data["jobs"]] == [cancelled.id, succeeded.id] and data["chosen"] == cancelled.id
    assert data["jobs"][1]["model"] == f"ft:{TINY_MODEL}:acme-labs:v1:ftjob-{succeeded.id}"
    assert data["jobs"][0]["model"] == f"ft:{TINY_MODEL}:acme-labs:v1:ftjob-{cancelled.id}:ckpt-step-6"
    assert data["jobs"][0]["base_model"] == TINY_MODEL and data["jobs"][0]["checkpoint"] is True
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
