"""A team's webhooks (owners manage them): endpoints, their delivery log, a test event."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from app.accounts.access import TeamAccess
from app.api.bodies import WebhookDeliveryOut, WebhookIn, WebhookOut, WebhookSecretOut, WebhookUpdateIn
from app.api.deps import AccessDep, SessionDep
from app.core.tables import WebhookDelivery, WebhookEndpoint
from app.webhooks import endpoints

router = APIRouter(prefix="/api/teams/{team_id}/webhooks", tags=["webhooks"])


def _owned(session, access: TeamAccess, team_id: int, webhook_id: int | None = None):
    """The team (404 unless the caller's), for its owners only (403); and the webhook, if named (404)."""
    team = access.team(session, team_id)
    access.require_owner(team.id, "its webhooks")
    return team, endpoints.endpoint_of(session, team.id, webhook_id) if webhook_id is not None else None


@router.get("", response_model=list[WebhookOut])
def list_webhooks(team_id: int, access: AccessDep, session: SessionDep) -> list[WebhookEndpoint]:
    team, _ = _owned(session, access, team_id)
    return endpoints.endpoints_of(session, team.id)


@router.post("", response_model=WebhookSecretOut, status_code=status.HTTP_201_CREATED)
def create_webhook(team_id: int, body: WebhookIn, access: AccessDep, session: SessionDep) -> WebhookSecretOut:
    """A new endpoint. The answer's `secret` verifies the signatures; it is shown this once."""
    team, _ = _owned(session, access, team_id)
    endpoint, secret = endpoints.create_endpoint(
        session,
        team=team,
        creator=access.user,
        url=body.url,
        event_types=body.event_types,
        description=body.description,
    )
    return WebhookSecretOut(**WebhookOut.model_validate(endpoint).model_dump(), secret=secret)


@router.patch("/{webhook_id}", response_model=WebhookOut)
def update_webhook(
    team_id: int, webhook_id: int, body: WebhookUpdateIn, access: AccessDep, session: SessionDep
) -> WebhookEndpoint:
    _, endpoint = _owned(session, access, team_id, webhook_id)
    return endpoints.update_endpoint(session, endpoint=endpoint, **body.model_dump(exclude_unset=True))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(team_id: int, webhook_id: int, access: AccessDep, session: SessionDep) -> None:
    _, endpoint = _owned(session, access, team_id, webhook_id)
    endpoints.delete_endpoint(session, endpoint=endpoint)


@router.post("/{webhook_id}/secret", response_model=WebhookSecretOut)
def rotate_webhook_secret(team_id: int, webhook_id: int, access: AccessDep, session: SessionDep) -> WebhookSecretOut:
    """A new signing secret, shown this once; the old one signs nothing from now on."""
    _, endpoint = _owned(session, access, team_id, webhook_id)
    secret = endpoints.rotate_secret(session, endpoint=endpoint)
    return WebhookSecretOut(**WebhookOut.model_validate(endpoint).model_dump(), secret=secret)


@router.post("/{webhook_id}/test", response_model=WebhookDeliveryOut, status_code=status.HTTP_202_ACCEPTED)
def send_test_event(team_id: int, webhook_id: int, access: AccessDep, session: SessionDep) -> WebhookDelivery:
    """A `webhook.test` event to this endpoint; its delivery shows in the log as it goes."""
    _, endpoint = _owned(session, access, team_id, webhook_id)
    return endpoints.send_test_event(session, endpoint=endpoint)


@router.get("/{webhook_id}/deliveries", response_model=list[WebhookDeliveryOut])
def list_deliveries(
    team_id: int, webhook_id: int, access: AccessDep, session: SessionDep, limit: int = Query(50, ge=1, le=100)
) -> list[WebhookDelivery]:
    """The endpoint's latest deliveries, newest first, with every try."""
    _, endpoint = _owned(session, access, team_id, webhook_id)
    return endpoints.deliveries_of(session, endpoint=endpoint, limit=limit)
