"""Inputs that once answered 500: NUL characters, integers too large for the database,
odd Last-Event-ID values, JSON that is not finite, seeds out of range. Each must be a 4xx."""

from __future__ import annotations

import pytest

from tests.helpers import TINY_MODEL, chat_rows, jsonl

HUGE = 2**70


@pytest.fixture
def member(make_account, models_env):
    account = make_account(team="acme", role="member")
    upload = account.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(6)))})
    account.dataset_id = upload.json()["id"]
    return account


def _spec(**overrides):
    return {"base_model": TINY_MODEL, "max_steps": 1, **overrides}


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", f"/api/jobs/{HUGE}"),
        ("get", f"/api/datasets/{HUGE}"),
        ("get", f"/api/jobs?after={HUGE}"),
        ("get", f"/api/jobs/1/events?after={HUGE}"),
        ("get", f"/api/jobs/1/metrics?after_step={HUGE}"),
        ("post", f"/api/jobs/{HUGE}/cancel"),
        ("get", f"/api/datasets/{HUGE}/preview"),
        ("get", f"/api/jobs/{HUGE}/artifacts/1/archive"),
        ("get", f"/api/teams/{HUGE}/members"),
        ("delete", f"/api/tokens/{HUGE}"),
        ("get", f"/v1/files/file-{HUGE}"),
        ("get", f"/v1/fine_tuning/jobs/ftjob-{10**30}"),
        ("get", "/api/jobs?created_by=a%00b"),
        ("get", "/v1/fine_tuning/jobs?after=ftjob-99999999999999999999"),
    ],
)
def test_ids_too_large_or_values_with_nul_are_a_client_error(member, method, path):
    response = getattr(member.client, method)(path)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])


@pytest.mark.parametrize(
    "body",
    [
        {"name": "a\x00b"},
        {"suffix": "a\x00b"},
        {"queue": "default\x00"},
        {"spec": _spec(seed=HUGE)},
        {"validation_dataset_id": HUGE},
        {"dataset_id": HUGE},
    ],
)
def test_job_submissions_with_bad_values_are_a_client_error(member, body):
    payload = {"spec": _spec(), "dataset_id": member.dataset_id, "queue": "nobody", **body}
    response = member.client.post("/api/jobs", json=payload)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])


def test_an_estimate_on_a_dataset_id_too_large_is_a_client_error(member):
    response = member.client.post("/api/jobs/estimate", json={"spec": _spec(), "dataset_id": HUGE})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])


@pytest.mark.parametrize(
    "raw",
    [
        '{"spec": {"base_model": "tiny-llama", "learning_rate": NaN}, "dataset_id": 1}',
        '{"spec": {"base_model": "tiny-llama", "epochs": Infinity}, "dataset_id": 1}',
        '{"spec": {"base_model": "tiny-llama", "epochs": 1e999}, "dataset_id": 1}',
    ],
)
def test_json_numbers_that_are_not_finite_are_a_client_error(member, raw):
    response = member.client.post("/api/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])


def test_uploads_and_sign_ins_with_nul_characters_are_a_client_error(member, client):
    named = member.client.post(
        "/api/datasets", files={"file": ("c\x00.jsonl", jsonl(chat_rows(7)))}, data={"name": "x\x00y"}
    )
    assert 400 <= named.status_code < 500 or named.status_code == 201, named.text[:300]
    if named.status_code == 201:
        assert "\x00" not in named.json()["name"] + named.json()["filename"]
    login = client.post("/api/session", json={"email": "a\x00@b.test", "password": "whatever1"})
    assert login.status_code in (401, 422)


@pytest.mark.parametrize("last_event_id", ["²".encode("latin-1"), b"9" * 5000, b"-1", b"1e3", b""])
def test_odd_last_event_ids_are_read_as_from_the_start_or_refused(member, last_event_id):
    job = member.client.post("/api/jobs", json={"spec": _spec(), "dataset_id": member.dataset_id, "queue": "nobody"})
    member.client.post(f"/api/jobs/{job.json()['id']}/cancel")
    with member.client.stream(
        "GET", f"/api/jobs/{job.json()['id']}/stream", headers={"Last-Event-ID": last_event_id}
    ) as response:
        assert response.status_code < 500
        if response.status_code == 200:
            assert "event: end" in "".join(response.iter_text())


def test_a_chat_seed_out_of_range_is_a_client_error(member):
    for seed in (HUGE, -1):
        response = member.client.post(
            "/v1/chat/completions",
            json={"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "seed": seed},
        )
        assert 400 <= response.status_code < 500, (seed, response.status_code, response.text[:300])
