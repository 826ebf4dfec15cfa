"""The events a team's webhooks receive, recorded as deliveries in the transaction that made
them (an outbox) and handed to the webhook workers once it commits::

    record_state_change(session, job, JobState.succeeded)   # in the transaction of the job's change

Nothing here waits for a receiver: the job commits its own change, and the delivery (with its
retries) happens on a worker of `TUNELAB_WEBHOOKS_QUEUE`. The payload is OpenAI's:
`{"id": "evt_...", "object": "event", "created_at": ..., "type": ..., "data": {"id": "ftjob-N"}}`.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from app.core.database import session_scope
from app.core.queue import enqueue_webhook_delivery
from app.core.tables import Job, JobState, WebhookDelivery, WebhookEndpoint, utcnow

log = logging.getLogger(__name__)

# OpenAI's fine-tuning events, and tunelab's own beside them.
EVENT_TYPES = (
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.running",
    "fine_tuning.job.checkpoint",
    "fine_tuning.job.eval",
)
TEST_EVENT = "webhook.test"  # sent by the settings page's button, to one endpoint, whatever it subscribes to
STATE_EVENTS = {
    JobState.succeeded: "fine_tuning.job.succeeded",
    JobState.failed: "fine_tuning.job.failed",
    JobState.cancelled: "fine_tuning.job.cancelled",
    JobState.running: "fine_tuning.job.running",
}
_PENDING = "tunelab_webhook_deliveries"
# A pending delivery this long past its due time lost its message (the broker was down when it
# was sent, or restarted with a retry in it): it is sent again.
OVERDUE = timedelta(minutes=5)
_MAX_ERROR_CHARS = 2000  # a failed job's error, as its event carries it
KEEP_FINISHED = timedelta(days=30)  # how long the delivery log keeps a finished delivery


def new_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "created_at": int(utcnow().timestamp()),
        "type": event_type,
        "data": data,
    }


def record(session: Session, endpoints: list[WebhookEndpoint], event: dict[str, Any]) -> list[WebhookDelivery]:
    """A pending delivery of `event` to each endpoint, sent to the webhook workers after commit."""
    now = utcnow()
    deliveries = [
        WebhookDelivery(
            endpoint_id=endpoint.id, event_id=event["id"], event_type=event["type"], payload=event, due_at=now
        )
        for endpoint in endpoints
    ]
    if deliveries:
        session.add_all(deliveries)
        session.flush()
        session.info.setdefault(_PENDING, []).extend(delivery.id for delivery in deliveries)
    return deliveries


def subscribers(session: Session, team_id: int, event_type: str) -> list[WebhookEndpoint]:
    """The team's enabled endpoints that want `event_type`."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.team_id == team_id, WebhookEndpoint.enabled.is_(True))
    return [endpoint for endpoint in session.scalars(query) if event_type in endpoint.event_types]


def record_job_event(session: Session, *, team_id: int, job_id: int, event_type: str, **data: Any) -> None:
    """The event for every endpoint of the job's team that wants it (most teams: none, one query)."""
    if endpoints := subscribers(session, team_id, event_type):
        record(session, endpoints, new_event(event_type, {"id": f"ftjob-{job_id}", **data}))


def record_state_change(session: Session, job: Job, to: JobState) -> None:
    """The event of a job's new state, for the states that have one."""
    if (event_type := STATE_EVENTS.get(to)) is not None:
        extra = {"error": job.error[:_MAX_ERROR_CHARS]} if to == JobState.failed and job.error else {}
        record_job_event(session, team_id=job.team_id, job_id=job.id, event_type=event_type, **extra)


@sa_event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    delivery_ids = session.info.pop(_PENDING, None)
    if delivery_ids:
        send(delivery_ids)


@sa_event.listens_for(Session, "after_rollback")
def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def send(delivery_ids: list[int]) -> None:
    """Hand deliveries to the webhook workers. A broker that cannot be reached must not fail
    the job that made the event: the deliveries stay pending, and the log says so."""
    for delivery_id in delivery_ids:
        try:
            enqueue_webhook_delivery(delivery_id)
        except Exception as error:  # noqa: BLE001 - any broker failure
            log.error("could not enqueue webhook delivery %s (%s: %s)", delivery_id, type(error).__name__, error)


def resend_overdue(limit: int = 500) -> list[int]:
    """Send again the deliveries long past due (their message was lost). A twin of a message that
    was only late finds the delivery done, or sends the same `webhook-id` again, which receivers
    dedupe. Returns the ids sent."""
    now = utcnow()
    with session_scope() as session:
        overdue = list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.state == "pending", WebhookDelivery.due_at < now - OVERDUE)
                .order_by(WebhookDelivery.id)
                .limit(limit)
            )
        )
        for delivery in overdue:
            delivery.due_at = now
        ids = [delivery.id for delivery in overdue]
    if ids:
        log.warning("sending %d webhook deliveries again: their messages were lost", len(ids))
        send(ids)
    return ids


def forget_old_deliveries() -> int:
    """Finished deliveries older than `KEEP_FINISHED` leave the log (it would grow for ever).
    Returns how many."""
    with session_scope() as session:
        result = session.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.state != "pending", WebhookDelivery.finished_at < utcnow() - KEEP_FINISHED
            )
        )
        return result.rowcount or 0
