"""Accounts as a user meets them: the first-run page, signing in, sessions and CSRF,
API tokens, teams and roles, and bad input that must change nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.accounts.tokens import create_api_token
from app.core.tables import ApiToken, Membership, Team, User, utcnow
from tests.helpers import PASSWORD, browser_sign_in, csrf_from


def _count(db, model) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(model))


def test_first_run_page_creates_the_admin_and_then_is_gone(client, db):
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")
    assert client.get("/login", follow_redirects=False).headers["location"] == "/setup"

    page = client.get("/setup")
    assert page.status_code == 200 and "Create administrator" in page.text
    response = client.post(
        "/setup",
        data={"email": "Ada@Example.com", "password": PASSWORD, "team": "research", "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/"

    me = client.get("/api/me").json()
    assert me["email"] == "ada@example.com" and me["is_admin"] is True
    assert me["teams"] == [{"id": me["teams"][0]["id"], "name": "research", "role": "owner"}]
    # From now on the page is gone, for anyone: its address leads to the dashboard or to signing in.
    again = client.get("/setup")
    assert again.status_code == 200 and again.url.path == "/"
    stranger = TestClient(client.app).get("/setup")
    assert stranger.status_code == 200 and stranger.url.path == "/login" and "Sign in" in stranger.text
    replay = client.post(
        "/setup",
        data={
            "email": "eve@example.com",
            "password": PASSWORD,
            "team": "x",
            "csrf_token": csrf_from(client.get("/").text),
        },
    )
    assert replay.url.path == "/" and "eve@example.com" not in replay.text
    assert _count(db, User) == 1


def test_first_run_form_shows_what_is_wrong_and_creates_nothing(client, db):
    token = csrf_from(client.get("/setup").text)
    response = client.post(
        "/setup", data={"email": "not-an-email", "password": PASSWORD, "team": "research", "csrf_token": token}
    )
    assert response.status_code == 422 and "not a valid email address" in response.text
    response = client.post(
        "/setup", data={"email": "a@b.co", "password": "short", "team": "research", "csrf_token": token}
    )
    assert response.status_code == 422 and "at least 8 characters" in response.text
    assert _count(db, User) == 0 and _count(db, Team) == 0


def test_forms_without_the_csrf_token_are_refused(client, db):
    client.get("/setup")
    response = client.post("/setup", data={"email": "a@b.co", "password": PASSWORD, "team": "t"})
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert _count(db, User) == 0


def test_sign_in_sets_a_protected_session_cookie(make_account, app):
    account = make_account()
    browser = TestClient(app)
    page = browser.get("/login")
    response = browser.post(
        "/login",
        data={"email": account.email, "password": PASSWORD, "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert browser.get("/api/me").json()["email"] == account.email


@pytest.mark.parametrize(
    "email, password",
    [
        ("nobody@example.com", PASSWORD),
        ("{email}", "wrong password"),
        ("' OR '1'='1' --", "' OR '1'='1"),
        ("{email}'; DROP TABLE users; --", PASSWORD),
    ],
)
def test_wrong_credentials_are_refused_alike(make_account, app, db, email, password):
    account = make_account()
    email = email.format(email=account.email)
    browser = TestClient(app)
    page = browser.get("/login")
    response = browser.post("/login", data={"email": email, "password": password, "csrf_token": csrf_from(page.text)})
    assert response.status_code == 401 and "Wrong email or password" in response.text
    assert browser.get("/api/me").status_code == 401
    api = TestClient(app).post("/api/session", json={"email": email, "password": password})
    assert api.status_code == 401 and api.json() == {"detail": "wrong email or password"}
    assert _count(db, User) == 1


def test_login_redirect_never_leaves_the_site(make_account, app):
    account = make_account()
    browser = TestClient(app)
    page = browser.get("/login?next=https://evil.example/")
    assert 'value="/"' in page.text
    response = browser.post(
        "/login",
        data={
            "email": account.email,
            "password": PASSWORD,
            "next": "//evil.example",
            "csrf_token": csrf_from(page.text),
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_cookie_requests_that_change_something_need_the_csrf_token(make_account, app):
    account = make_account()
    browser = TestClient(app)
    csrf = browser_sign_in(browser, account.email)
    assert browser.post("/api/tokens", json={"name": "x"}).status_code == 403
    assert browser.post("/api/tokens", json={"name": "x"}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    created = browser.post("/api/tokens", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201


@pytest.mark.parametrize("cookie", ["garbage", "eyJ1aWQiOiAxfQ==.forged.signature", "", "a" * 5000])
def test_malformed_session_cookies_are_treated_as_signed_out(make_account, app, cookie):
    make_account()
    browser = TestClient(app, cookies={"tunelab_session": cookie})
    assert browser.get("/api/me").status_code == 401
    assert browser.get("/", follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session(make_account, app):
    account = make_account()
    browser = TestClient(app)
    csrf = browser_sign_in(browser, account.email)
    assert browser.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert browser.get("/api/me").status_code == 401


def test_api_token_is_shown_once_and_works_until_revoked(make_account, app, db):
    account = make_account()
    created = account.client.post("/api/tokens", json={"name": "ci"}).json()
    secret = created["token"]
    assert secret.startswith("tl_") and len(secret) > 40
    listed = account.client.get("/api/tokens").json()
    assert all("token" not in row for row in listed)
    assert {row["name"] for row in listed} == {"tests", "ci"}
    assert db.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.token_hash == secret)) == 0

    fresh = TestClient(app, headers={"Authorization": f"Bearer {secret}"})
    assert fresh.get("/api/me").json()["email"] == account.email
    assert account.client.delete(f"/api/tokens/{created['id']}").json()["revoked_at"] is not None
    response = fresh.get("/api/me")
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_tokens_last_use_is_recorded_at_most_once_a_minute(make_account, db):
    account = make_account()
    row = db.scalar(select(ApiToken).where(ApiToken.user_id == account.user_id))
    assert row.last_used_at is None
    account.client.get("/api/me")
    db.expire_all()
    first = db.get(ApiToken, row.id).last_used_at
    assert first is not None and utcnow() - first < timedelta(seconds=30)
    account.client.get("/api/me")
    db.expire_all()
    assert db.get(ApiToken, row.id).last_used_at == first, "not written again within the minute"
    row = db.get(ApiToken, row.id)
    row.last_used_at = first - timedelta(minutes=5)
    db.commit()
    account.client.get("/api/me")
    db.expire_all()
    assert db.get(ApiToken, row.id).last_used_at > first, "written again once the minute is over"


def test_expired_tokens_are_refused(make_account, app, db):
    account = make_account()
    row, secret = create_api_token(db, user=db.get(User, account.user_id), name="old", expires_in_days=1)
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.commit()
    response = TestClient(app, headers={"Authorization": f"Bearer {secret}"}).get("/api/me")
    assert response.status_code == 401 and "expired" in response.json()["detail"]


@pytest.mark.parametrize("header", ["Bearer", "Basic dXNlcjpwYXNz", "Bearer tl_not-a-real-token", "tl_abc"])
def test_malformed_authorization_headers_are_refused(make_account, app, header):
    make_account()
    response = TestClient(app, headers={"Authorization": header}).get("/api/me")
    assert response.status_code == 401


def test_a_user_cannot_revoke_someone_elses_token(make_account, db):
    alice, bob = make_account(team="acme"), make_account(team="acme")
    bob_token = db.scalar(select(ApiToken).where(ApiToken.user_id == bob.user_id))
    assert alice.client.delete(f"/api/tokens/{bob_token.id}").status_code == 404
    assert bob.client.get("/api/me").status_code == 200


def test_admin_creates_users_and_bad_input_changes_nothing(make_account, db):
    admin = make_account(team="acme", role="owner", admin=True)
    created = admin.client.post("/api/users", json={"email": "New@Acme.test", "password": PASSWORD, "team": "acme"})
    assert created.status_code == 201 and created.json()["email"] == "new@acme.test"
    before = _count(db, User), _count(db, Membership), _count(db, Team)
    for body, status, message in [
        ({"email": "new@acme.test", "password": PASSWORD, "team": "acme"}, 409, "already exists"),
        ({"email": "x@acme.test", "password": PASSWORD, "team": "no-such-team"}, 404, "does not exist"),
        ({"email": "x@acme.test", "password": "short", "team": "acme"}, 422, "at least 8"),
        ({"email": "'; DROP TABLE users; --", "password": PASSWORD, "team": "acme"}, 422, "not a valid email"),
    ]:
        response = admin.client.post("/api/users", json=body)
        assert response.status_code == status and message in response.json()["detail"]
    assert (_count(db, User), _count(db, Membership), _count(db, Team)) == before


def test_only_admins_create_users_and_teams(make_account):
    owner = make_account(team="acme", role="owner")
    assert (
        owner.client.post("/api/users", json={"email": "x@y.test", "password": PASSWORD, "team": "acme"}).status_code
        == 403
    )
    assert owner.client.post("/api/teams", json={"name": "other"}).status_code == 403


def test_owners_manage_members_and_viewers_cannot(make_account):
    owner = make_account(team="acme", role="owner")
    viewer = make_account(team="acme", role="viewer")
    outsider = make_account(team="globex", role="owner")
    team_id = owner.team_id

    members = owner.client.put(f"/api/teams/{team_id}/members", json={"email": outsider.email, "role": "viewer"})
    assert members.status_code == 200
    assert {m["email"]: m["role"] for m in members.json()}[outsider.email] == "viewer"

    refused = viewer.client.put(f"/api/teams/{team_id}/members", json={"email": viewer.email, "role": "owner"})
    assert refused.status_code == 403
    only_owner = owner.client.delete(f"/api/teams/{team_id}/members/{owner.user_id}")
    assert only_owner.status_code == 409 and "at least one owner" in only_owner.json()["detail"]
    assert owner.client.put(f"/api/teams/{team_id}/members", json={"email": "ghost@x.test"}).status_code == 404


def test_another_teams_team_is_not_found(make_account):
    acme = make_account(team="acme", role="owner")
    globex = make_account(team="globex", role="owner")
    for response in (
        globex.client.get(f"/api/teams/{acme.team_id}/members"),
        globex.client.put(f"/api/teams/{acme.team_id}/members", json={"email": globex.email}),
        globex.client.delete(f"/api/teams/{acme.team_id}/members/{acme.user_id}"),
        globex.client.get("/api/teams/999999/members"),
    ):
        assert response.status_code == 404 and response.json() == {"detail": "team not found"}
    assert [t["name"] for t in globex.client.get("/api/teams").json()] == ["globex"]


def test_pages_and_api_carry_the_security_headers(client, db):
    for path in ("/setup", "/api/me", "/static/tunelab.css"):
        headers = client.get(path).headers
        assert (
            "script-src 'self'" in headers["content-security-policy"]
            and "frame-ancestors 'none'" in headers["content-security-policy"]
        )
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
