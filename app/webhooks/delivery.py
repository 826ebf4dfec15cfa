"""Delivering one webhook event, signed the Standard Webhooks way (standardwebhooks.com)::

    webhook-id: evt_...             the event's id, the same on every retry (receivers dedupe on it)
    webhook-timestamp: 1767225600   seconds since the epoch, when this try was signed
    webhook-signature: v1,<base64 of HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>

`deliver` makes one try and logs it on the delivery (when, status code, duration, error); the
Celery task (`worker.tasks.deliver_webhook`) retries it after the backoff it returns. It runs on
a webhook worker: the job that made the event never waits for a receiver.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.config import get_settings
from app.core.database import session_scope
from app.core.tables import WebhookDelivery, WebhookEndpoint, utcnow
from app.webhooks.addresses import RefusedAddress, Target, resolve

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SECRET_PREFIX = "whsec_"
MAX_BACKOFF_S = 3600.0
_MAX_ERROR_CHARS = 300


def new_secret() -> str:
    """A signing secret: 32 random bytes, as Standard Webhooks writes them."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def backoff_s(tries: int) -> float:
    """How long to wait after the `tries`-th failed try: doubling, capped, with a little jitter
    so that the retries of many deliveries do not all arrive at once."""
    base = min(get_settings().webhooks_backoff_s * 2 ** (tries - 1), MAX_BACKOFF_S)
    return base * random.uniform(1.0, 1.1)


def deliver(delivery_id: int) -> float | None:
    """Try a pending delivery once. None when it is done (delivered, failed for good, or gone);
    else how many seconds to wait before the next try."""
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.state != PENDING:
            return None
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            delivery.state, delivery.finished_at, delivery.due_at = FAILED, utcnow(), None
            delivery.attempts = [*delivery.attempts, _log_entry(None, 0.0, "the endpoint was disabled")]
            return None
        url, secret, event_id, body = endpoint.url, endpoint.secret, delivery.event_id, body_of(delivery.payload)

    # No database connection is held while the receiver answers.
    status_code, duration_s, error, final = _post(url, secret, event_id, body)

    settings = get_settings()
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.state != PENDING:  # deleted with its endpoint meanwhile, or done by a twin
            return None
        delivery.attempts = [*delivery.attempts, _log_entry(status_code, duration_s, error)]
        tries = len(delivery.attempts)
        if error is None:
            delivery.state, delivery.finished_at, delivery.due_at = DELIVERED, utcnow(), None
            return None
        if final or tries >= settings.webhooks_max_attempts:
            delivery.state, delivery.finished_at, delivery.due_at = FAILED, utcnow(), None
            return None
        wait_s = backoff_s(tries)
        delivery.due_at = utcnow() + timedelta(seconds=wait_s)
        return wait_s


def _log_entry(status_code: int | None, duration_s: float, error: str | None) -> dict[str, Any]:
    return {
        "at": utcnow().isoformat(),
        "status_code": status_code,
        "duration_ms": round(duration_s * 1000),
        "error": error[:_MAX_ERROR_CHARS] if error else None,
    }


def _post(url: str, secret: str, event_id: str, body: bytes) -> tuple[int | None, float, str | None, bool]:
    """(status code, seconds, error or None, whether retrying is pointless) of one signed POST."""
    import httpx  # here: only a webhook worker needs it, and the web app starts faster without it

    started = time.monotonic()
    try:
        target = resolve(url)  # again at every try: DNS may have changed since the endpoint was saved
    except RefusedAddress as error:
        return None, time.monotonic() - started, str(error), not error.transient
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "tunelab-webhooks/1",
        "host": urlsplit(url).netloc,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, event_id, timestamp, body),
    }
    # Connect to the address that was checked, not to whatever the name resolves to a moment later;
    # TLS still verifies the certificate against the URL's host name.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    timeout = get_settings().webhooks_timeout_s
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream("POST", _pinned(target), content=body, headers=headers, extensions=extensions) as answer,
        ):
            status_code = answer.status_code  # the receiver's body is not read
    except httpx.TimeoutException:
        return None, time.monotonic() - started, f"no answer within {timeout:g} s", False
    except httpx.HTTPError as error:
        return None, time.monotonic() - started, f"{type(error).__name__}: {error}", False
    duration = time.monotonic() - started
    if 200 <= status_code < 300:
        return status_code, duration, None, False
    return status_code, duration, f"the receiver answered HTTP {status_code}", False


def _pinned(target: Target) -> str:
    parts = urlsplit(target.url)
    host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    return urlunsplit(parts._replace(netloc=f"{host}:{target.port}"))
