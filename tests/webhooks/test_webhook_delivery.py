"""Job events reach a team's webhooks: recorded in the job's own transaction, delivered signed
(verified here by the `standardwebhooks` package, not by tunelab's code), retried with backoff by
a real worker after a failure, cut off when the receiver hangs, never sent to a refused address."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
import standardwebhooks
from sqlalchemy import select

from app.config import get_settings
from app.core.blobs import blob_store
from app.core.queue import queue_length
from app.core.tables import ArtifactKind, JobState, WebhookDelivery, utcnow
from app.jobs.artifacts import job_output_key, record_artifact
from app.jobs.states import request_cancel, transition
from app.jobs.timeline import MetricPoint, add_metrics
from app.webhooks.delivery import deliver
from app.webhooks.events import forget_old_deliveries, resend_overdue
from tests.helpers import add_dataset, add_job, chat_rows, forget_cached_settings, wait_for
from tests.webhooks.receiver import create_webhook


def _pending(db) -> list[int]:
    db.expire_all()
    return list(db.scalars(select(WebhookDelivery.id).where(WebhookDelivery.state == "pending").order_by("id")))


def _deliver_pending(db) -> None:
    """What the webhook worker does with each delivery it is handed (one try each, all succeed here)."""
    for delivery_id in _pending(db):
        assert deliver(delivery_id) is None


def _checkpoint(db, job, step: int) -> None:
    store = blob_store()
    path = store.path(f"{job_output_key(job.id)}/checkpoints/step-{step}")
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    record_artifact(db, store, job_id=job.id, kind=ArtifactKind.checkpoint, step=step, path=path)


def test_each_job_state_reaches_the_receiver_signed_and_verifiable(db, owner, allow_private, receiver):
    webhook = create_webhook(owner, receiver.url)
    dataset = add_dataset(db, owner, chat_rows(6))
    done, broken, stopped = (add_job(db, owner, JobState.queued, name=n, dataset=dataset) for n in "abc")

    transition(db, done, JobState.running)
    _checkpoint(db, done, 4)
    add_metrics(db, done, [MetricPoint(step=4, split="train", values={"loss": 2.0})])  # no event
    add_metrics(db, done, [MetricPoint(step=4, split="eval", values={"eval_loss": 1.25})])
    transition(db, done, JobState.succeeded)
    transition(db, broken, JobState.running)
    transition(db, broken, JobState.failed, error="CUDA out of memory")
    request_cancel(db, stopped)
    db.commit()
    assert receiver.received == []  # nothing is sent from the job's side: a worker delivers

    _deliver_pending(db)

    events = receiver.verified(webhook["secret"])
    assert [(e["type"], e["data"]["id"]) for e in events] == [
        ("fine_tuning.job.running", f"ftjob-{done.id}"),
        ("fine_tuning.job.checkpoint", f"ftjob-{done.id}"),
        ("fine_tuning.job.eval", f"ftjob-{done.id}"),
        ("fine_tuning.job.succeeded", f"ftjob-{done.id}"),
        ("fine_tuning.job.running", f"ftjob-{broken.id}"),
        ("fine_tuning.job.failed", f"ftjob-{broken.id}"),
        ("fine_tuning.job.cancelled", f"ftjob-{stopped.id}"),
    ]
    assert events[1]["data"]["step"] == 4
    assert events[2]["data"] == {"id": f"ftjob-{done.id}", "step": 4, "metrics": {"eval_loss": 1.25}}
    assert events[5]["data"]["error"] == "CUDA out of memory"
    for event, request in zip(events, receiver.received, strict=True):
        assert event["object"] == "event" and event["id"].startswith("evt_")
        assert request.headers["webhook-id"] == event["id"]
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        assert abs(event["created_at"] - time.time()) < 60

    # A body changed on the way, or another secret, does not verify.
    first = receiver.received[0]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhook["secret"]).verify(first.body.replace(b"running", b"succeeded"), first.headers)
    other = create_webhook(owner, receiver.url)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other["secret"]).verify(first.body, first.headers)

    log = owner.client.get(f"/api/teams/{owner.team_id}/webhooks/{webhook['id']}/deliveries").json()
    assert len(log) == 7 and {d["state"] for d in log} == {"delivered"}
    assert log[0]["event_type"] == "fine_tuning.job.cancelled"  # newest first
    assert log[0]["attempts"][0]["status_code"] == 200 and log[0]["attempts"][0]["error"] is None


def test_an_endpoint_gets_only_the_events_it_asked_for_and_a_disabled_one_none(db, owner, allow_private, receiver):
    failures = create_webhook(owner, receiver.url, ["fine_tuning.job.failed"])
    disabled = create_webhook(owner, receiver.url)
    owner.client.patch(f"/api/teams/{owner.team_id}/webhooks/{disabled['id']}", json={"enabled": False})
    job = add_job(db, owner, JobState.queued)
    transition(db, job, JobState.running)
    transition(db, job, JobState.failed, error="boom")
    db.commit()
    _deliver_pending(db)
    assert [e["type"] for e in receiver.verified(failures["secret"])] == ["fine_tuning.job.failed"]


def test_another_teams_jobs_send_nothing_to_this_team(db, owner, make_account, allow_private, receiver):
    create_webhook(owner, receiver.url)
    other = make_account(team="globex", role="owner")
    job = add_job(db, other, JobState.queued)
    transition(db, job, JobState.running)
    db.commit()
    assert _pending(db) == []


def test_a_receiver_that_hangs_is_cut_off_and_never_slows_the_job(db, owner, allow_private, receiver, monkeypatch):
    monkeypatch.setenv("TUNELAB_WEBHOOKS_TIMEOUT_S", "0.5")
    forget_cached_settings()
    create_webhook(owner, receiver.url)
    receiver.hang_s = 5
    job = add_job(db, owner, JobState.queued)

    started = time.monotonic()
    transition(db, job, JobState.running)
    db.commit()
    assert time.monotonic() - started < 0.5  # the job commits without waiting for anyone

    (delivery_id,) = _pending(db)
    started = time.monotonic()
    retry_in = deliver(delivery_id)
    assert time.monotonic() - started < 3
    assert retry_in is not None and retry_in > 0
    attempt = db.get(WebhookDelivery, delivery_id).attempts[0]
    assert attempt["error"] == "no answer within 0.5 s" and attempt["status_code"] is None
    assert db.get(WebhookDelivery, delivery_id).state == "pending"


def test_retries_are_bounded_and_back_off(db, owner, allow_private, receiver, monkeypatch):
    monkeypatch.setenv("TUNELAB_WEBHOOKS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("TUNELAB_WEBHOOKS_BACKOFF_S", "10")
    forget_cached_settings()
    create_webhook(owner, receiver.url)
    receiver.statuses = [503]
    transition(db, add_job(db, owner, JobState.queued), JobState.running)
    db.commit()
    (delivery_id,) = _pending(db)

    waits = [deliver(delivery_id), deliver(delivery_id), deliver(delivery_id)]
    assert 10 <= waits[0] <= 11 and 20 <= waits[1] <= 22  # doubling, with a little jitter
    assert waits[2] is None  # the third failure is the last
    db.expire_all()
    delivery = db.get(WebhookDelivery, delivery_id)
    assert delivery.state == "failed" and [a["status_code"] for a in delivery.attempts] == [503, 503, 503]
    assert delivery.attempts[0]["error"] == "the receiver answered HTTP 503"
    assert deliver(delivery_id) is None and len(receiver.received) == 3  # a late duplicate message sends nothing


def test_the_address_is_checked_again_at_delivery(db, owner, allow_private, receiver, monkeypatch):
    """A webhook saved while private addresses were allowed (or whose name resolved elsewhere
    then) is not called once its address is refused."""
    create_webhook(owner, receiver.url)
    transition(db, add_job(db, owner, JobState.queued), JobState.running)
    db.commit()
    monkeypatch.setenv("TUNELAB_WEBHOOKS_ALLOW_PRIVATE", "false")
    forget_cached_settings()

    (delivery_id,) = _pending(db)
    assert deliver(delivery_id) is None  # refused for good: no retry
    db.expire_all()
    delivery = db.get(WebhookDelivery, delivery_id)
    assert delivery.state == "failed" and "loopback" in delivery.attempts[0]["error"]
    assert receiver.received == []


def test_a_redirect_is_not_followed(db, owner, allow_private, receiver):
    create_webhook(owner, receiver.url)
    receiver.statuses = [307, 200]
    receiver.location = receiver.url + "/elsewhere"
    transition(db, add_job(db, owner, JobState.queued), JobState.running)
    db.commit()
    (delivery_id,) = _pending(db)
    assert deliver(delivery_id) is not None  # a failed try, to retry later
    assert len(receiver.received) == 1
    assert db.get(WebhookDelivery, delivery_id).attempts[0]["error"] == "the receiver answered HTTP 307"


def test_the_worker_retries_after_a_500_until_the_receiver_takes_it(
    db, owner, allow_private, receiver, workers, monkeypatch
):
    """The whole path: the settings page's test event, the broker, a real webhook worker, a
    500 from the receiver, Celery's retry after the backoff, a 200."""
    monkeypatch.setenv("TUNELAB_WEBHOOKS_QUEUE", workers.queue)
    monkeypatch.setenv("TUNELAB_WEBHOOKS_BACKOFF_S", "0.5")
    forget_cached_settings()
    webhook = create_webhook(owner, receiver.url, ["fine_tuning.job.succeeded"])
    receiver.statuses = [500, 200]
    workers.start(max_tasks_per_child=None)

    sent = owner.client.post(f"/api/teams/{owner.team_id}/webhooks/{webhook['id']}/test")
    assert sent.status_code == 202 and sent.json()["state"] == "pending"
    url = f"/api/teams/{owner.team_id}/webhooks/{webhook['id']}/deliveries"
    delivered = wait_for(
        lambda: next((d for d in owner.client.get(url).json() if d["state"] != "pending"), None),
        timeout=60,
        message="the test event to be delivered",
    )
    assert delivered["state"] == "delivered"
    assert [a["status_code"] for a in delivered["attempts"]] == [500, 200]
    events = receiver.verified(webhook["secret"])
    assert [e["type"] for e in events] == ["webhook.test", "webhook.test"]
    assert events[0]["id"] == events[1]["id"] == delivered["event_id"]  # one id across retries: receivers dedupe
    first, second = (datetime.fromisoformat(a["at"]) for a in delivered["attempts"])
    assert (second - first).total_seconds() >= 0.5  # the retry waited out the backoff


def test_a_broker_that_cannot_be_reached_fails_no_job_and_the_delivery_is_sent_later(
    db, owner, allow_private, receiver, monkeypatch
):
    create_webhook(owner, receiver.url)
    monkeypatch.setenv("TUNELAB_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    forget_cached_settings()
    job = add_job(db, owner, JobState.queued)
    started = time.monotonic()
    transition(db, job, JobState.running)
    db.commit()  # the job's change is kept; the delivery waits in the outbox
    assert time.monotonic() - started < 10
    db.expire_all()
    assert db.get(type(job), job.id).state == JobState.running
    (delivery_id,) = _pending(db)

    monkeypatch.delenv("TUNELAB_BROKER_URL")  # the broker is back (the embedded one here)
    forget_cached_settings()
    queue = get_settings().webhooks_queue
    assert resend_overdue() == [] and not queue_length(queue)  # not overdue yet
    db.get(WebhookDelivery, delivery_id).due_at = utcnow() - timedelta(minutes=6)
    db.commit()
    assert resend_overdue() == [delivery_id]
    assert queue_length(queue) == 1
    assert resend_overdue() == []  # sent once, not at every sweep


def test_the_delivery_log_forgets_finished_deliveries_after_a_month(db, owner, allow_private, receiver):
    webhook = create_webhook(owner, receiver.url)
    job = add_job(db, owner, JobState.queued)
    transition(db, job, JobState.running)
    transition(db, job, JobState.failed, error="boom")
    db.commit()
    old, recent = _pending(db)
    _deliver_pending(db)
    db.get(WebhookDelivery, old).finished_at = utcnow() - timedelta(days=31)
    db.commit()
    assert forget_old_deliveries() == 1
    log = owner.client.get(f"/api/teams/{owner.team_id}/webhooks/{webhook['id']}/deliveries").json()
    assert [d["id"] for d in log] == [recent]
