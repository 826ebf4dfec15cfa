"""GET /healthz tells an operator (or a load balancer) whether tunelab can work."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.core.tables import WorkerProcess, utcnow
from tests.helpers import forget_cached_settings


def test_healthy_with_database_broker_and_a_live_worker(client, db):
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "broker": "ok", "workers": 0}
    db.add(WorkerProcess(name="celery@gpu-1", hostname="gpu-1", pid=1, queues="default"))
    db.commit()
    assert client.get("/healthz").json()["workers"] == 1


def test_healthy_against_redis_as_the_broker(app, redis_url, monkeypatch):
    monkeypatch.setenv("TUNELAB_BROKER_URL", redis_url)
    forget_cached_settings()
    body = TestClient(app).get("/healthz").json()
    assert body["broker"] == "ok"


def test_unreachable_database_answers_503(app, monkeypatch):
    monkeypatch.setenv("TUNELAB_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    forget_cached_settings()
    response = TestClient(app).get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable" and response.json()["status"] == "unavailable"


def test_unreachable_broker_answers_503(app, monkeypatch):
    monkeypatch.setenv("TUNELAB_BROKER_URL", "redis://127.0.0.1:1/0")
    forget_cached_settings()
    response = TestClient(app).get("/healthz")
    assert response.status_code == 503 and response.json()["broker"] == "unreachable"


def test_stale_workers_are_not_counted(client, db):
    from datetime import timedelta

    db.add(
        WorkerProcess(
            name="celery@gone", hostname="gone", pid=2, queues="default", last_seen_at=utcnow() - timedelta(minutes=10)
        )
    )
    db.commit()
    assert client.get("/healthz").json()["workers"] == 0
