"""Guessing passwords: failed sign-ins are throttled per account and per client address with
a 429 and Retry-After, and the Argon2 computations a flood of them starts are bounded."""

from __future__ import annotations

import threading

import pytest

from app.accounts.credentials import hash_password, hashing_slots, verify_password
from app.accounts.throttle import LoginThrottle
from app.config import get_settings
from app.core.errors import TooManyRequests
from tests.helpers import PASSWORD, csrf_from


def _sign_in(client, email: str, password: str):
    return client.post("/api/session", json={"email": email, "password": password})


def test_an_account_is_locked_after_ten_failures_even_for_the_right_password(make_account, client):
    victim, bystander = make_account(), make_account()
    for _ in range(10):
        assert _sign_in(client, victim.email, "wrong password").status_code == 401
    refused = _sign_in(client, victim.email, PASSWORD)
    assert refused.status_code == 429 and "this account" in refused.json()["detail"]
    assert 0 < int(refused.headers["retry-after"]) <= 900
    assert _sign_in(client, bystander.email, PASSWORD).status_code == 200, "other accounts are not locked"


def test_one_address_guessing_many_accounts_is_stopped(make_account, client):
    real = make_account()
    for i in range(50):
        assert _sign_in(client, f"nobody{i}@example.test", "wrong password").status_code == 401
    refused = _sign_in(client, real.email, PASSWORD)
    assert refused.status_code == 429 and "your address" in refused.json()["detail"]


def test_the_sign_in_page_says_when_to_try_again(make_account, client):
    victim = make_account()
    for _ in range(10):
        _sign_in(client, victim.email, "wrong password")
    form = client.get("/login")
    page = client.post("/login", data={"email": victim.email, "password": PASSWORD, "csrf_token": csrf_from(form.text)})
    assert page.status_code == 429 and "Too many failed sign-ins for this account" in page.text
    assert int(page.headers["retry-after"]) > 0


def test_failures_age_out_of_the_window_and_success_forgets_the_accounts_failures():
    now = [0.0]
    throttle = LoginThrottle(per_account=3, per_address=100, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        throttle.failed("a@x.test", "10.0.0.1")
    with pytest.raises(TooManyRequests) as refused:
        throttle.check("a@x.test", "10.0.0.1")
    assert refused.value.retry_after_s == 60
    now[0] = 61.0
    throttle.check("a@x.test", "10.0.0.1")  # aged out
    throttle.failed("a@x.test", "10.0.0.1")
    throttle.succeeded("a@x.test")
    for _ in range(2):
        throttle.failed("a@x.test", "10.0.0.1")
    throttle.check("a@x.test", "10.0.0.1")  # two failures since the success: under the limit


def test_at_most_the_bound_of_password_hashes_run_at_once(settings_env):
    stored = hash_password("correct horse battery")
    slots = hashing_slots()
    slots.peak = 0
    started = threading.Barrier(12)
    answers = []

    def sign_in_attempt() -> None:
        started.wait()
        answers.append(verify_password(stored, "correct horse battery"))

    threads = [threading.Thread(target=sign_in_attempt) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [True] * 12
    assert 2 <= slots.peak <= get_settings().max_concurrent_password_hashes == 4
