"""Signing out ends a browser session for good, and live streams close once their caller
may no longer see them."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import browser_sign_in, csrf_from


def test_a_cookie_copied_before_sign_out_no_longer_works(make_account, app):
    member = make_account()
    browser = TestClient(app)
    browser_sign_in(browser, member.email)
    copied = dict(browser.cookies)
    assert browser.get("/api/me").json()["email"] == member.email

    browser.post("/logout", data={"csrf_token": csrf_from(browser.get("/").text)}, follow_redirects=False)
    thief = TestClient(app, cookies=copied)
    assert thief.get("/api/me").status_code == 401
    assert thief.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_signing_out_through_the_api_ends_the_session_too(make_account, app):
    member = make_account()
    browser = TestClient(app)
    csrf = browser_sign_in(browser, member.email)
    copied = dict(browser.cookies)
    assert browser.delete("/api/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert TestClient(app, cookies=copied).get("/api/me").status_code == 401


def test_a_deactivated_users_sessions_stop_working(make_account, app, db):
    from app.core.tables import User

    member = make_account()
    browser = TestClient(app)
    browser_sign_in(browser, member.email)
    db.get(User, member.user_id).is_active = False
    db.commit()
    assert browser.get("/api/me").status_code == 401


@pytest.fixture
def quick_recheck(models_env, monkeypatch):
    monkeypatch.setenv("TUNELAB_STREAM_ACCESS_RECHECK_S", "0.5")


def _stream_closes(url: str, token: str, act) -> float:
    """Open the dashboard stream, call `act` once it is flowing; seconds until it closed."""
    with httpx.stream("GET", f"{url}/api/stream", headers={"Authorization": f"Bearer {token}"}, timeout=20) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: snapshot"
        act()
        acted = time.monotonic()
        for _line in lines:
            pass
        return time.monotonic() - acted


def test_a_live_stream_closes_when_its_token_is_revoked(quick_recheck, live_server, make_account):
    member = make_account(team="acme")
    second = member.client.post("/api/tokens", json={"name": "stream"}).json()
    closed_after = _stream_closes(
        live_server, second["token"], lambda: member.client.delete(f"/api/tokens/{second['id']}")
    )
    assert closed_after < 10


def test_a_live_stream_closes_when_its_caller_leaves_the_team(quick_recheck, live_server, make_account):
    owner = make_account(team="acme", role="owner")
    member = make_account(team="acme", role="member")
    closed_after = _stream_closes(
        live_server,
        member.token,
        lambda: owner.client.delete(f"/api/teams/{owner.team_id}/members/{member.user_id}").raise_for_status(),
    )
    assert closed_after < 10
