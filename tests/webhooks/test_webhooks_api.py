"""Managing a team's webhooks through the API: owners only, a secret shown once, only http(s)
URLs to public addresses (unless the administrator allows others), a delivery log."""

from __future__ import annotations

import pytest

from tests.helpers import forget_cached_settings
from tests.webhooks.receiver import create_webhook


def test_an_owner_creates_a_webhook_and_sees_its_secret_once(owner, allow_private, receiver):
    created = create_webhook(owner, receiver.url, ["fine_tuning.job.succeeded", "fine_tuning.job.failed"])
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert created["event_types"] == ["fine_tuning.job.succeeded", "fine_tuning.job.failed"]

    listed = owner.client.get(f"/api/teams/{owner.team_id}/webhooks").json()
    assert [w["url"] for w in listed] == [receiver.url]
    assert "secret" not in listed[0] and created["secret"] not in owner.client.get("/settings").text

    rotated = owner.client.post(f"/api/teams/{owner.team_id}/webhooks/{created['id']}/secret").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]


def test_members_and_viewers_cannot_see_or_change_webhooks(owner, make_account, allow_private, receiver):
    webhook = create_webhook(owner, receiver.url)
    member = make_account(team="acme", role="member")
    base = f"/api/teams/{owner.team_id}/webhooks"
    assert member.client.get(base).status_code == 403
    assert (
        member.client.post(base, json={"url": receiver.url, "event_types": ["fine_tuning.job.failed"]}).status_code
        == 403
    )
    assert member.client.delete(f"{base}/{webhook['id']}").status_code == 403
    assert member.client.post(f"{base}/{webhook['id']}/secret").status_code == 403
    assert len(owner.client.get(base).json()) == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("http://user:pw@example.com/hook", "no user name or password"),
        ("http://127.0.0.1:8000/api/jobs", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private or reserved"),
        ("http://192.168.0.10/hook", "private or reserved"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://0.0.0.0/hook", "private or reserved"),
        ("http://no-such-host.invalid/hook", "cannot be resolved"),
        ("http://exa\u0000mple.com/hook", "cannot be resolved"),
        ("http://" + "a" * 70 + ".com/hook", "cannot be resolved"),
    ],
)
def test_a_webhook_url_must_be_http_and_public(owner, url, reason):
    response = owner.client.post(
        f"/api/teams/{owner.team_id}/webhooks", json={"url": url, "event_types": ["fine_tuning.job.succeeded"]}
    )
    assert response.status_code == 422, response.text
    assert reason in response.text
    assert owner.client.get(f"/api/teams/{owner.team_id}/webhooks").json() == []


def test_an_administrator_can_allow_private_addresses(owner, monkeypatch, receiver):
    base = f"/api/teams/{owner.team_id}/webhooks"
    body = {"url": receiver.url, "event_types": ["fine_tuning.job.succeeded"]}
    assert owner.client.post(base, json=body).status_code == 422
    monkeypatch.setenv("TUNELAB_WEBHOOKS_ALLOW_PRIVATE", "true")
    forget_cached_settings()
    assert owner.client.post(base, json=body).status_code == 201


def test_unknown_event_types_are_refused_with_the_known_ones(owner, allow_private, receiver):
    base = f"/api/teams/{owner.team_id}/webhooks"
    response = owner.client.post(base, json={"url": receiver.url, "event_types": ["fine_tuning.job.exploded"]})
    assert response.status_code == 422
    assert "fine_tuning.job.exploded" in response.text and "fine_tuning.job.succeeded" in response.text
    assert owner.client.post(base, json={"url": receiver.url, "event_types": []}).status_code == 422


def test_a_webhook_is_disabled_edited_and_deleted(owner, allow_private, receiver):
    webhook = create_webhook(owner, receiver.url)
    url = f"/api/teams/{owner.team_id}/webhooks/{webhook['id']}"
    changed = owner.client.patch(url, json={"enabled": False, "event_types": ["fine_tuning.job.failed"]})
    assert changed.status_code == 200
    assert changed.json()["enabled"] is False and changed.json()["event_types"] == ["fine_tuning.job.failed"]
    assert owner.client.post(f"{url}/test").status_code == 409  # a disabled webhook gets no test event
    # A bad change changes nothing.
    assert owner.client.patch(url, json={"url": "gopher://x", "description": "new"}).status_code == 422
    assert owner.client.get(f"/api/teams/{owner.team_id}/webhooks").json()[0]["description"] == "CI notifier"
    assert owner.client.delete(url).status_code == 204
    assert owner.client.get(f"/api/teams/{owner.team_id}/webhooks").json() == []
    assert owner.client.get(f"{url}/deliveries").status_code == 404


def test_a_team_has_a_bounded_number_of_webhooks(owner, allow_private, receiver, monkeypatch):
    monkeypatch.setenv("TUNELAB_WEBHOOKS_PER_TEAM", "2")
    forget_cached_settings()
    create_webhook(owner, receiver.url)
    create_webhook(owner, receiver.url)
    response = owner.client.post(
        f"/api/teams/{owner.team_id}/webhooks", json={"url": receiver.url, "event_types": ["fine_tuning.job.failed"]}
    )
    assert response.status_code == 409 and "2 webhooks" in response.text
