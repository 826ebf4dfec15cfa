"""Live streams over SSE against a real uvicorn server: replay from Last-Event-ID, then
live, with nothing lost or duplicated across a reconnect; with Redis push and without."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from app.core.database import session_scope
from app.core.tables import Job, JobState
from app.jobs.states import transition
from app.jobs.timeline import MetricPoint, add_metrics
from tests.helpers import add_dataset, chat_rows, forget_cached_settings, tiny_spec


class SSE:
    """Server-sent events read off a streaming response, one parsed event at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def read(self, *, until, timeout: float = 30) -> list[dict]:
        """Events until `until(events)` is true, or until the server closes the stream."""
        events, current = [], {}
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if time.monotonic() > deadline:
                pytest.fail(f"stream timed out; got {events}")
            if not line:
                if current.get("data") is not None:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                    if until(events):
                        return events
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                current[field] = value.removeprefix(" ")
        return events


def read_sse(response: httpx.Response, *, until, timeout: float = 30) -> list[dict]:
    return SSE(response).read(until=until, timeout=timeout)


@pytest.fixture(params=["redis", "polling"])
def push_mode(request, models_env, redis_url, monkeypatch):
    if request.param == "redis":
        monkeypatch.setenv("TUNELAB_REDIS_URL", redis_url)
    forget_cached_settings()
    return request.param


@pytest.fixture
def running_job(make_account, db, push_mode):
    account = make_account(team="acme")
    dataset = add_dataset(db, account, chat_rows())
    created = account.client.post("/api/jobs", json={"spec": tiny_spec(), "dataset_id": dataset.id, "queue": "nobody"})
    job = db.get(Job, created.json()["id"])
    transition(db, job, JobState.running)
    db.commit()
    return account, job.id


def _report(job_id: int, steps, delay: float = 0.0) -> None:
    for step in steps:
        with session_scope() as session:
            job = session.get(Job, job_id)
            add_metrics(session, job, [MetricPoint(step, "train", {"loss": 1.0 / step})])
        time.sleep(delay)


def _headers(account, last_event_id=None) -> dict:
    headers = {"Authorization": f"Bearer {account.token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


def test_replay_after_last_event_id_then_end(running_job, live_server):
    account, job_id = running_job
    _report(job_id, range(1, 6))
    with session_scope() as session:
        transition(session, session.get(Job, job_id), JobState.succeeded)
    url = f"{live_server}/api/jobs/{job_id}/stream"
    with httpx.stream("GET", url, headers=_headers(account), timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        everything = read_sse(response, until=lambda e: e[-1]["event"] == "end")
    stored = [e for e in everything if "id" in e]
    assert [int(e["id"]) for e in stored] == list(range(1, len(stored) + 1))
    assert [e["data"]["step"] for e in stored if e["event"] == "metric"] == [1, 2, 3, 4, 5]
    assert everything[-1] == {"event": "end", "data": {"state": "succeeded"}}

    # Reconnecting after the third item sends exactly what followed it.
    with httpx.stream("GET", url, headers=_headers(account, last_event_id=3), timeout=30) as response:
        resumed = [e for e in read_sse(response, until=lambda e: e[-1]["event"] == "end") if "id" in e]
    assert resumed == stored[3:]


def test_live_points_arrive_and_a_reconnect_loses_and_duplicates_nothing(running_job, live_server):
    account, job_id = running_job
    url = f"{live_server}/api/jobs/{job_id}/stream"
    metric_steps = lambda events: [e["data"]["step"] for e in events if e["event"] == "metric"]

    reporter = threading.Thread(target=_report, args=(job_id, range(1, 41), 0.02))
    with httpx.stream("GET", url, headers=_headers(account), timeout=30) as response:
        reporter.start()
        first = read_sse(response, until=lambda e: len(metric_steps(e)) >= 15)
    last_id = max(int(e["id"]) for e in first if "id" in e)
    reporter.join()
    with session_scope() as session:
        transition(session, session.get(Job, job_id), JobState.succeeded)
    with httpx.stream("GET", url, headers=_headers(account, last_event_id=last_id), timeout=30) as response:
        second = read_sse(response, until=lambda e: e[-1]["event"] == "end")
    assert metric_steps(first) + metric_steps(second) == list(range(1, 41))


def test_live_delay_is_short(running_job, live_server, push_mode):
    account, job_id = running_job
    url = f"{live_server}/api/jobs/{job_id}/stream"
    with httpx.stream("GET", url, headers=_headers(account), timeout=30) as response:
        stream = SSE(response)
        stream.read(until=lambda e: any(x["event"] == "progress" for x in e))
        started = time.monotonic()
        threading.Thread(target=_report, args=(job_id, [1])).start()
        stream.read(until=lambda e: any(x["event"] == "metric" for x in e))
        delay = time.monotonic() - started
    assert delay < (0.5 if push_mode == "redis" else 1.5), f"{push_mode}: {delay:.3f}s from report to receipt"


def test_another_team_cannot_open_the_stream(running_job, make_account, live_server):
    _account, job_id = running_job
    outsider = make_account(team="globex")
    response = httpx.get(f"{live_server}/api/jobs/{job_id}/stream", headers=_headers(outsider), timeout=10)
    assert response.status_code == 404


def test_team_stream_sends_a_snapshot_then_changes_of_the_teams_jobs_only(running_job, make_account, db, live_server):
    account, job_id = running_job
    outsider = make_account(team="globex")
    theirs = add_dataset(db, outsider, chat_rows(), name="theirs.jsonl")
    with httpx.stream("GET", f"{live_server}/api/stream", headers=_headers(account), timeout=30) as response:
        stream = SSE(response)
        snapshot = stream.read(until=lambda e: e[-1]["event"] == "snapshot")[-1]["data"]
        assert [j["id"] for j in snapshot] == [job_id] and snapshot[0]["state"] == "running"
        outsider.client.post("/api/jobs", json={"spec": tiny_spec(), "dataset_id": theirs.id, "queue": "nobody"})
        with session_scope() as session:
            transition(session, session.get(Job, job_id), JobState.cancelling)
        changes = stream.read(until=lambda e: e[-1]["event"] == "job")
    assert [(e["data"]["id"], e["data"]["state"]) for e in changes] == [(job_id, "cancelling")]


def test_a_loss_written_after_its_step_reaches_the_job_page(running_job, live_server):
    """The worker writes the step at once and the step's train and eval losses a moment later:
    each of them is news for the page's facts, though the step did not change."""
    account, job_id = running_job
    url = f"{live_server}/api/jobs/{job_id}/stream"
    progress = lambda events: [e["data"] for e in events if e["event"] == "progress"]
    with httpx.stream("GET", url, headers=_headers(account), timeout=30) as response:
        stream = SSE(response)
        stream.read(until=lambda e: len(progress(e)) == 1)
        with session_scope() as session:
            job = session.get(Job, job_id)
            job.step, job.total_steps = 4, 8
            add_metrics(session, job, [MetricPoint(4, "train", {"loss": 0.5, "epoch": 1.0})])
        stream.read(until=lambda e: any(p["train_loss"] == 0.5 for p in progress(e)))
        with session_scope() as session:
            add_metrics(session, session.get(Job, job_id), [MetricPoint(4, "eval", {"eval_loss": 0.7, "epoch": 1.0})])
        later = stream.read(until=lambda e: bool(progress(e)), timeout=10)
    assert progress(later)[-1]["step"] == 4 and progress(later)[-1]["eval_loss"] == 0.7
