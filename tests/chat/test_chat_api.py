"""Chat requests when no inference worker answers: a clear error, at once or after the pickup
timeout, never a hang; and the request's life as the worker and the app share it."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from app.chat import completions
from app.core.tables import Completion, CompletionState, WorkerProcess
from tests.helpers import TINY_MODEL, browser_sign_in, forget_cached_settings

SKY = [{"role": "user", "content": "What colour is the sky?"}]


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme")


def _chat(account, **overrides):
    return account.client.post("/v1/chat/completions", json={"model": TINY_MODEL, "messages": SKY, **overrides})


def _silent_inference_worker(db) -> None:
    """A worker that says it serves the inference queue but never takes anything (hung, or busy)."""
    db.add(WorkerProcess(name="celery@silent", hostname="elsewhere", pid=1, queues="default,inference"))
    db.commit()


def test_without_an_inference_worker_chat_answers_503_at_once(acme, db):
    started = time.monotonic()
    response = _chat(acme)
    assert time.monotonic() - started < 5
    assert response.status_code == 503 and response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "no_inference_worker"
    assert (
        "No inference worker is running" in error["message"] and "tunelab worker --queues inference" in error["message"]
    )
    assert db.scalar(select(Completion)) is None


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_no_worker_takes_fails_after_the_pickup_timeout(acme, db, monkeypatch, stream):
    monkeypatch.setenv("TUNELAB_INFERENCE_PICKUP_TIMEOUT_S", "1")
    forget_cached_settings()
    _silent_inference_worker(db)
    started = time.monotonic()
    response = _chat(acme, stream=stream)
    assert 1 <= time.monotonic() - started < 10
    assert response.status_code == 503
    assert response.json()["error"]["message"].startswith("No inference worker took the request within 1 s")
    db.expire_all()
    request = db.scalar(select(Completion))
    assert request.state == CompletionState.failed and request.model == TINY_MODEL
    assert completions.claim(db, request.id, "late-worker:1") is None, "a worker that comes later leaves it alone"


def test_an_answer_that_stops_moving_fails_and_a_cancelled_one_stops_the_worker(acme, db, monkeypatch):
    monkeypatch.setenv("TUNELAB_INFERENCE_STALL_TIMEOUT_S", "0.5")
    forget_cached_settings()
    stalled, cancelled = (
        completions.create(
            db,
            team_id=acme.team_id,
            user_id=acme.user_id,
            model=TINY_MODEL,
            base_model=TINY_MODEL,
            weights_key=None,
            request={},
        )
        for _ in range(2)
    )
    db.commit()
    for request in (stalled, cancelled):
        assert completions.claim(db, request.id, "worker:1") is not None
        assert completions.write_text(db, request.id, "The sky")
    db.commit()
    time.sleep(0.6)
    progress = completions.read_progress(stalled.id)
    assert progress.state == CompletionState.failed and progress.text == "The sky"
    assert "stopped answering" in progress.error

    assert completions.cancel(db, cancelled.id)
    assert not completions.write_text(db, cancelled.id, "The sky is"), "the worker is told to stop"
    assert not completions.finish(
        db, cancelled.id, text="The sky is blue.", finish_reason="stop", prompt_tokens=1, completion_tokens=1
    )


@pytest.mark.parametrize(
    "change, param, message",
    [
        ({"n": 2}, "n", "one choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "does not call tools"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
            "only text content",
        ),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4 stop strings"),
    ],
)
def test_requests_tunelab_cannot_honour_are_refused(acme, db, change, param, message):
    _silent_inference_worker(db)
    response = _chat(acme, **change)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"] and error["type"] == "invalid_request_error"
    assert db.scalar(select(Completion)) is None


def test_unknown_models_are_not_found(acme, db):
    for model in ("no-such-model", f"ft:{TINY_MODEL}:acme::ftjob-999", "../../etc/passwd"):
        response = _chat(acme, model=model)
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_the_browser_session_chats_with_its_csrf_token(acme, app, db):
    from fastapi.testclient import TestClient

    browser = TestClient(app)
    csrf = browser_sign_in(browser, acme.email)
    body = {"model": TINY_MODEL, "messages": SKY, "stream": True}
    refused = browser.post("/v1/chat/completions", json=body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    answered = browser.post("/v1/chat/completions", json=body, headers={"X-CSRF-Token": csrf})
    assert answered.status_code == 503 and answered.json()["error"]["code"] == "no_inference_worker"


def test_requests_are_deleted_an_hour_after_they_last_changed(acme, db):
    from datetime import timedelta

    from app.core.tables import utcnow

    def new_request() -> Completion:
        return completions.create(
            db,
            team_id=acme.team_id,
            user_id=acme.user_id,
            model=TINY_MODEL,
            base_model=TINY_MODEL,
            weights_key=None,
            request={},
        )

    old, recent = new_request(), new_request()
    old.created_at = old.updated_at = utcnow() - timedelta(hours=2)
    recent.created_at = utcnow() - timedelta(hours=2)  # still being answered
    db.commit()
    new_request()
    db.commit()
    assert sorted(db.scalars(select(Completion.id))) == [recent.id, recent.id + 1]
