"""Owners invite people with a link (no mail server); the link works once, expires, can be
revoked; the invitee sets a password or signs in, and joins with the role. Owners change roles
and remove members; the last owner can neither leave, be removed nor be demoted."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.core.tables import Invitation, Membership, User
from tests.helpers import PASSWORD, browser_sign_in, csrf_from


@pytest.fixture
def acme(make_account):
    return make_account(team="acme", role="owner", email="owner@acme.test")


def _invite(owner, email: str, role: str = "member"):
    response = owner.client.post(f"/api/teams/{owner.team_id}/invitations", json={"email": email, "role": role})
    assert response.status_code == 201, response.text
    return response.json()


def _path(invitation: dict) -> str:
    return "/invite/" + invitation["url"].rsplit("/invite/", 1)[1]


def _accept_with_password(app, invitation: dict, password: str = PASSWORD, again: str | None = None):
    client = TestClient(app)
    page = client.get(_path(invitation))
    response = client.post(
        _path(invitation),
        data={"password": password, "password_again": again or password, "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )
    return client, page, response


def test_a_new_person_accepts_with_a_password_and_is_in_the_team_with_the_role(app, db, acme):
    invitation = _invite(acme, "New.Person@example.com", "viewer")
    assert invitation["email"] == "new.person@example.com" and invitation["role"] == "viewer"
    secret = _path(invitation).rsplit("/", 1)[1]
    stored = db.scalar(select(Invitation).where(Invitation.id == invitation["id"]))
    assert secret not in stored.secret_hash and len(stored.secret_hash) == 64  # only a hash is kept

    client, page, response = _accept_with_password(app, invitation)
    assert "Join acme" in page.text and "viewer" in page.text and "owner@acme.test invites" in page.text
    assert response.status_code == 303
    with client:
        me = client.get("/api/me").json()  # signed in by accepting
        assert me["email"] == "new.person@example.com"
        assert me["teams"] == [{"id": acme.team_id, "name": "acme", "role": "viewer"}]
        assert "new.person@example.com" not in [
            i["email"] for i in acme.client.get(f"/api/teams/{acme.team_id}/invitations").json()
        ]

    # Single use: the link now says so, and a second try changes nothing.
    used_client, used_page, used = _accept_with_password(app, invitation, "another long password")
    assert used_page.status_code == 410 and "used already" in used_page.text
    assert used.status_code == 410
    used_client.close()


def test_refused_acceptances_create_nothing(app, db, acme):
    invitation = _invite(acme, "x@example.com")
    _client, _page, short = _accept_with_password(app, invitation, "short")
    assert short.status_code == 422 and "at least 8 characters" in short.text
    _client, _page, differ = _accept_with_password(app, invitation, PASSWORD, "a different password")
    assert differ.status_code == 422 and "differ" in differ.text
    db.expire_all()
    assert db.scalar(select(User).where(User.email == "x@example.com")) is None
    assert db.get(Invitation, invitation["id"]).accepted_at is None


def test_expired_revoked_and_unknown_links_are_refused(app, db, acme):
    expired = _invite(acme, "late@example.com")
    db.execute(update(Invitation).where(Invitation.id == expired["id"]).values(expires_at=Invitation.created_at))
    db.commit()
    revoked = _invite(acme, "gone@example.com")
    assert acme.client.delete(f"/api/teams/{acme.team_id}/invitations/{revoked['id']}").status_code == 204
    pending = [i["email"] for i in acme.client.get(f"/api/teams/{acme.team_id}/invitations").json()]
    assert pending == []

    client = TestClient(app)
    assert "expired" in client.get(_path(expired)).text and client.get(_path(expired)).status_code == 410
    assert "withdrawn" in client.get(_path(revoked)).text and client.get(_path(revoked)).status_code == 410
    assert client.get("/invite/not-a-real-secret").status_code == 404
    _c, _p, response = _accept_with_password(app, expired)
    assert response.status_code == 410
    db.expire_all()
    assert db.scalar(select(User).where(User.email == "late@example.com")) is None


def test_a_newer_invitation_replaces_the_older_link(app, acme):
    first = _invite(acme, "twice@example.com")
    second = _invite(acme, "twice@example.com", "owner")
    client = TestClient(app)
    assert client.get(_path(first)).status_code == 410
    assert client.get(_path(second)).status_code == 200
    pending = acme.client.get(f"/api/teams/{acme.team_id}/invitations").json()
    assert [(i["email"], i["role"]) for i in pending] == [("twice@example.com", "owner")]


def test_an_existing_user_signs_in_and_joins(app, db, acme, make_account):
    gus = make_account(team="globex", role="owner", email="gus@globex.test")
    invitation = _invite(acme, gus.email, "member")
    client = TestClient(app)
    with client:
        page = client.get(_path(invitation))
        assert "Sign in to join" in page.text
        # Accepting without signing in cannot take over the account.
        taken = client.post(
            _path(invitation),
            data={
                "password": "a new long password",
                "password_again": "a new long password",
                "csrf_token": csrf_from(page.text),
            },
            follow_redirects=False,
        )
        assert taken.status_code == 409 and "sign in" in taken.text
        csrf = browser_sign_in(client, gus.email)
        assert "Join acme" in client.get(_path(invitation)).text
        joined = client.post(_path(invitation), data={"csrf_token": csrf}, follow_redirects=False)
        assert joined.status_code == 303
        me = client.get("/api/me").json()
        assert {t["name"]: t["role"] for t in me["teams"]} == {"acme": "member", "globex": "owner"}
        assert 'id="page-team">acme<' in client.get("/").text  # the joined team is the one they work in


def test_a_link_for_someone_else_does_not_let_a_signed_in_user_join(app, db, acme, make_account):
    eve = make_account(team="evil", role="owner", email="eve@evil.test")
    invitation = _invite(acme, "bob@example.com")
    client = TestClient(app)
    with client:
        csrf = browser_sign_in(client, eve.email)
        assert "this invitation is for bob@example.com" in client.get(_path(invitation)).text
        refused = client.post(_path(invitation), data={"csrf_token": csrf}, follow_redirects=False)
        assert refused.status_code == 403
    db.expire_all()
    assert (
        db.scalar(select(Membership).where(Membership.user_id == eve.user_id, Membership.team_id == acme.team_id))
        is None
    )


def test_only_owners_invite_and_see_invitations(acme, make_account, db):
    member = make_account(team="acme", role="member")
    outsider = make_account(team="globex", role="owner")
    assert member.client.post(f"/api/teams/{acme.team_id}/invitations", json={"email": "a@b.test"}).status_code == 403
    assert member.client.get(f"/api/teams/{acme.team_id}/invitations").status_code == 403
    invitation = _invite(acme, "c@d.test")
    assert member.client.delete(f"/api/teams/{acme.team_id}/invitations/{invitation['id']}").status_code == 403
    assert outsider.client.post(f"/api/teams/{acme.team_id}/invitations", json={"email": "a@b.test"}).status_code == 404
    assert outsider.client.delete(f"/api/teams/{outsider.team_id}/invitations/{invitation['id']}").status_code == 404
    already = acme.client.post(f"/api/teams/{acme.team_id}/invitations", json={"email": member.email})
    assert already.status_code == 409 and "already a member" in already.json()["detail"]
    bad = acme.client.post(f"/api/teams/{acme.team_id}/invitations", json={"email": "not an email"})
    assert bad.status_code == 422


def test_the_last_owner_can_neither_leave_be_removed_nor_be_demoted(acme, make_account):
    member = make_account(team="acme", role="member")
    team = acme.team_id
    left = acme.client.delete(f"/api/teams/{team}/members/{acme.user_id}")
    assert left.status_code == 409 and "at least one owner" in left.json()["detail"]
    demoted = acme.client.put(f"/api/teams/{team}/members", json={"email": acme.email, "role": "member"})
    assert demoted.status_code == 409 and "at least one owner" in demoted.json()["detail"]

    # With a second owner, the first may step down; members may leave on their own.
    assert (
        acme.client.put(f"/api/teams/{team}/members", json={"email": member.email, "role": "owner"}).status_code == 200
    )
    assert (
        acme.client.put(f"/api/teams/{team}/members", json={"email": acme.email, "role": "member"}).status_code == 200
    )
    assert acme.client.delete(f"/api/teams/{team}/members/{member.user_id}").status_code == 403  # no longer an owner
    assert acme.client.delete(f"/api/teams/{team}/members/{acme.user_id}").status_code == 200  # leaves
    assert [m["email"] for m in member.client.get(f"/api/teams/{team}/members").json()] == [member.email]


def test_invitations_expire_after_the_configured_time(acme, db, monkeypatch):
    from tests.helpers import forget_cached_settings

    monkeypatch.setenv("TUNELAB_INVITATION_MAX_AGE_S", "3600")
    forget_cached_settings()
    invitation = _invite(acme, "soon@example.com")
    stored = db.get(Invitation, invitation["id"])
    assert stored.expires_at - stored.created_at == timedelta(hours=1)


def test_the_access_log_does_not_show_an_invitation_secret(app, caplog):
    import logging

    log = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/invite/s3cr3t-link", "1.1", 200)
        log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/login?next=%2Finvite%2Fs3cr3t&x=1", "1.1", 200)
        log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/datasets", "1.1", 200)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        '127.0.0.1:5000 - "GET /invite/<secret> HTTP/1.1" 200',
        '127.0.0.1:5000 - "GET /login?next=%2Finvite%2F<secret>&x=1 HTTP/1.1" 200',
        '127.0.0.1:5000 - "GET /datasets HTTP/1.1" 200',
    ]


def test_two_acceptances_at_once_make_one_account(acme, db):
    import threading

    from app.accounts import invitations
    from app.core.database import session_scope
    from app.core.errors import AccountError

    secret = _path(_invite(acme, "racer@example.com")).rsplit("/", 1)[1]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def accept() -> None:
        start.wait()
        try:
            with session_scope() as session:
                invitations.accept_as_new_user(session, secret=secret, password=PASSWORD)
            outcomes.append("joined")
        except AccountError as error:
            outcomes.append(f"{error.status}")

    threads = [threading.Thread(target=accept) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["410", "joined"]
    db.expire_all()
    assert len(db.scalars(select(User).where(User.email == "racer@example.com")).all()) == 1
