"""A broker that restarts empty loses the messages of queued jobs: they are sent again,
once, and a job whose message is still there is left alone."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
import redis as redis_lib
from sqlalchemy import select, update

from app.config import get_settings
from app.core.queue import job_ids_in_broker
from app.core.tables import Job, JobEvent, utcnow
from app.jobs.recovery import resend_lost_messages
from tests.helpers import add_dataset, chat_rows, tiny_spec


def _empty_the_broker(queue: str) -> None:
    url = get_settings().celery_broker_url
    if url.startswith("redis"):
        redis_lib.Redis.from_url(url).delete(queue)
    else:
        with sqlite3.connect(url.removeprefix("embedded+sqlite:///")) as connection:
            connection.execute("DELETE FROM kombu_message")


def _last_changed(db, job_id: int, ago: timedelta) -> None:
    db.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow() - ago))
    db.commit()


def _age(db, job_id: int) -> None:
    _last_changed(db, job_id, timedelta(minutes=5))


@pytest.fixture(params=["redis", "embedded"])
def broker(request, models_env):
    if request.param == "redis":
        request.getfixturevalue("redis_broker")
    return request.param


def test_a_queued_job_whose_message_was_lost_is_sent_again_once(broker, make_account, db):
    acme = make_account()
    dataset = add_dataset(db, acme, chat_rows(6))
    queue = f"lost-{broker}-{acme.user_id}"
    job_id = acme.client.post("/api/jobs", json={"spec": tiny_spec(), "dataset_id": dataset.id, "queue": queue}).json()[
        "id"
    ]
    assert job_ids_in_broker(queue) == {job_id}

    _age(db, job_id)
    assert resend_lost_messages() == [], "a message that is there is not sent twice"

    _last_changed(db, job_id, timedelta(0))
    _empty_the_broker(queue)
    assert job_ids_in_broker(queue) == set()
    assert resend_lost_messages() == [], "a job queued a moment ago may be between its commit and its send"
    _age(db, job_id)
    assert resend_lost_messages() == [job_id]
    assert job_ids_in_broker(queue) == {job_id}
    events = db.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert any("sent it again" in message for message in events)

    _age(db, job_id)
    assert resend_lost_messages() == [], "once sent again, it is there"
    if broker == "redis":
        redis_lib.Redis.from_url(get_settings().celery_broker_url).delete(queue)
