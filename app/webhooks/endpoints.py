"""A team's webhook endpoints, as its owners manage them: keyword-only, no HTTP. The signing
secret is returned by `create_endpoint` and `rotate_secret` only, to be shown once."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.core.errors import Conflict, InvalidField, NotFound
from app.core.tables import Team, User, WebhookDelivery, WebhookEndpoint
from app.webhooks.addresses import check_url
from app.webhooks.delivery import new_secret
from app.webhooks.events import EVENT_TYPES, TEST_EVENT, new_event, record

MAX_DELIVERIES_LISTED = 100


def check_event_types(event_types: Sequence[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidField(("event_types",), f"unknown event types {unknown}: choose among {list(EVENT_TYPES)}")
    if not event_types:
        raise InvalidField(("event_types",), "choose at least one event type")
    return [event_type for event_type in EVENT_TYPES if event_type in event_types]  # in a stable order, once each


def endpoints_of(session: Session, team_id: int) -> list[WebhookEndpoint]:
    return list(
        session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.team_id == team_id).order_by(WebhookEndpoint.id))
    )


def endpoint_of(session: Session, team_id: int, endpoint_id: int) -> WebhookEndpoint:
    """One of the team's endpoints; NotFound for a missing one and another team's alike."""
    endpoint = session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.team_id == team_id)
    )
    if endpoint is None:
        raise NotFound("webhook not found")
    return endpoint


def create_endpoint(
    session: Session, *, team: Team, creator: User, url: str, event_types: Sequence[str], description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (to show once)."""
    count = session.scalar(select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.team_id == team.id))
    limit = get_settings().webhooks_per_team
    if (count or 0) >= limit:
        raise Conflict(f"a team can have {limit} webhooks: delete one first")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        team_id=team.id,
        created_by_id=creator.id,
        url=check_url(url),
        event_types=check_event_types(event_types),
        description=description.strip(),
        secret=secret,
        enabled=True,
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def update_endpoint(
    session: Session,
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    event_types: Sequence[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change what is given; all checks pass before anything changes."""
    checked_url = check_url(url) if url is not None else endpoint.url
    checked_types = check_event_types(event_types) if event_types is not None else endpoint.event_types
    endpoint.url, endpoint.event_types = checked_url, checked_types
    if description is not None:
        endpoint.description = description.strip()
    if enabled is not None:
        endpoint.enabled = enabled
    session.flush()
    return endpoint


def delete_endpoint(session: Session, *, endpoint: WebhookEndpoint) -> None:
    """The endpoint and its delivery log; deliveries still pending are not sent."""
    session.delete(endpoint)
    session.flush()


def rotate_secret(session: Session, *, endpoint: WebhookEndpoint) -> str:
    """A new signing secret (to show once); the old one signs nothing from now on."""
    endpoint.secret = new_secret()
    session.flush()
    return endpoint.secret


def send_test_event(session: Session, *, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """A `webhook.test` event to this endpoint alone, delivered (after commit) like any other."""
    if not endpoint.enabled:
        raise Conflict("this webhook is disabled: enable it to send it a test event")
    event = new_event(TEST_EVENT, {"webhook_id": endpoint.id, "message": "a test event from tunelab"})
    return record(session, [endpoint], event)[0]


def deliveries_of(session: Session, *, endpoint: WebhookEndpoint, limit: int = 50) -> list[WebhookDelivery]:
    """The endpoint's latest deliveries, newest first."""
    limit = max(1, min(limit, MAX_DELIVERIES_LISTED))
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))
