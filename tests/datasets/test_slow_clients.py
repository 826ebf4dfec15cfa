"""Clients that send slowly, or not at all: an upload in progress holds no database
connection or lock, is cut off when it stalls, and uploads are bounded per user (429)."""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text

from app.core.database import session_scope
from tests.helpers import chat_rows, jsonl

BOUNDARY = "slow-client-boundary"


@pytest.fixture
def upload_limits(models_env, monkeypatch):
    """Tight limits for the server these tests start, so that they are quick to reach."""
    monkeypatch.setenv("TUNELAB_UPLOAD_IDLE_TIMEOUT_S", "2")
    monkeypatch.setenv("TUNELAB_MAX_UPLOADS_PER_USER", "1")


@contextmanager
def held_upload(base_url: str, token: str):
    """An upload whose client sends the headers and the first rows, then nothing: the socket."""
    content = jsonl(chat_rows(50))
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    body_length = len(head) + len(content) + len(f"\r\n--{BOUNDARY}--\r\n")
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    request = (
        f"POST /api/datasets HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {body_length}\r\n\r\n"
    ).encode()
    sock.sendall(request + head + content[: len(content) // 2])
    try:
        yield sock
    finally:
        sock.close()


def _answer(sock: socket.socket) -> str:
    """The server's whole response: its head, then as many bytes as its Content-Length says."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def _idle_in_transaction() -> int:
    with session_scope() as session:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
        return session.execute(text(query)).scalar_one()


def test_a_held_upload_holds_no_connection_transaction_or_lock(upload_limits, live_server, make_account):
    acme, globex = make_account(team="acme"), make_account(team="globex")
    with held_upload(live_server, acme.token):
        time.sleep(0.5)  # the server has read the headers and the first rows by now
        assert _idle_in_transaction() == 0, "the upload's request keeps a transaction open"
        for account in (acme, globex):  # the same token, and another team's, are answered at once
            started = time.monotonic()
            response = httpx.get(f"{live_server}/api/datasets", headers={"Authorization": f"Bearer {account.token}"})
            assert response.status_code == 200 and time.monotonic() - started < 2


def test_an_upload_that_stops_sending_is_cut_off_with_408_and_leaves_nothing(
    upload_limits, live_server, make_account, settings_env
):
    acme = make_account(team="acme")
    with held_upload(live_server, acme.token) as sock:
        started = time.monotonic()
        answer = _answer(sock)
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "sent nothing for 2 s" in answer and time.monotonic() - started < 10
    assert httpx.get(f"{live_server}/api/datasets", headers={"Authorization": f"Bearer {acme.token}"}).json() == []
    assert not [p for p in (settings_env / "blobs").rglob("*") if p.is_file()], "no staged file is left"


def test_a_second_upload_of_the_same_user_at_once_gets_429_and_others_are_not_held_up(
    upload_limits, live_server, make_account
):
    acme, globex = make_account(team="acme"), make_account(team="globex")
    file = {"file": ("c.jsonl", jsonl(chat_rows(6)))}
    with held_upload(live_server, acme.token):
        time.sleep(0.5)
        second = httpx.post(
            f"{live_server}/api/datasets", headers={"Authorization": f"Bearer {acme.token}"}, files=file
        )
        assert second.status_code == 429 and int(second.headers["retry-after"]) > 0
        assert "uploads in progress" in second.json()["detail"]
        other = httpx.post(
            f"{live_server}/api/datasets", headers={"Authorization": f"Bearer {globex.token}"}, files=file
        )
        assert other.status_code == 201, other.text
