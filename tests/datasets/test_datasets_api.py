"""The datasets API as a user meets it: upload files in every format, see every error with
its line number, and find nothing stored after a refused upload."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.core.tables import Dataset, Job, JobState
from tests.helpers import chat_rows, jsonl, tiny_spec

DATA = Path(__file__).parent / "data"
EXPECTED_FORMATS = {
    "chat.jsonl": "chat",
    "sharegpt.jsonl": "sharegpt",
    "prompt_completion.jsonl": "prompt_completion",
    "instruction.jsonl": "instruction",
    "text.jsonl": "text",
    "classification.jsonl": "classification",
}


@pytest.fixture
def acme(make_account):
    return make_account(team="acme", role="member")


def _upload(account, filename: str, content: bytes, **fields):
    return account.client.post("/api/datasets", files={"file": (filename, content)}, data=fields)


def _stored_files(settings_env) -> list[Path]:
    blobs = settings_env / "blobs"
    return sorted(p for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []


def _count(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(Dataset))


@pytest.mark.parametrize("filename, expected", EXPECTED_FORMATS.items())
def test_each_format_is_accepted_with_its_format_and_stats(acme, filename, expected):
    content = (DATA / filename).read_bytes()
    response = _upload(acme, filename, content)
    assert response.status_code == 201, response.text
    dataset = response.json()
    rows = sum(1 for line in content.splitlines() if line.strip())
    assert (dataset["format"], dataset["row_count"], dataset["size_bytes"]) == (expected, rows, len(content))
    assert dataset["name"] == filename and dataset["created_by"] == acme.email
    stats = dataset["stats"]
    assert stats["rows"] == rows and stats["estimated_tokens"] > 0
    assert {"min", "median", "p95", "max"} <= set(stats["chars_per_row"])
    assert sum(bucket["rows"] for bucket in stats["length_histogram"]) == rows
    listed = acme.client.get("/api/datasets").json()
    assert [d["id"] for d in listed] == [dataset["id"]]


def test_a_file_with_errors_is_refused_with_every_error_and_nothing_is_stored(acme, db, settings_env):
    content = (
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
        b'{"mesages": [{"role": "user", "content": "hi"}]}\n'
        b"\n"
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assitant", "content": "x"}]}\n'
        b"not json at all\n"
    )
    response = _upload(acme, "broken.jsonl", content)
    assert response.status_code == 422
    body = response.json()
    assert body["error_count"] == len(body["errors"]) == 4
    by_line = {error["line"]: error["message"] for error in body["errors"]}
    assert set(by_line) == {2, 3, 4, 5}
    assert 'did you mean "messages"' in by_line[2]
    assert "blank" in by_line[3].lower()
    assert "assistant" in by_line[4]
    assert "JSON" in by_line[5]
    assert _count(db) == 0 and _stored_files(settings_env) == []


def test_an_error_on_many_rows_is_listed_once_with_its_count_and_first_lines(acme, db, settings_env):
    response = _upload(acme, "bad.jsonl", b'{"text": "fine"}\n' + b"[1, 2]\n" * 250 + b'{"text": 3}\n')
    assert response.status_code == 422
    assert response.json() == {
        "errors": [
            {
                "line": 2,
                "message": 'the line is a list, not a JSON object like {"messages": [...]}',
                "count": 250,
                "lines": [2, 3, 4, 5, 6],
            },
            {"line": 252, "message": '"text" must be a string, not a number (3)', "count": 1, "lines": [252]},
        ],
        "error_count": 251,
    }
    assert _count(db) == 0 and _stored_files(settings_env) == []


def test_a_file_over_the_limit_is_refused_with_413_and_nothing_is_stored(acme, db, settings_env, monkeypatch):
    from tests.helpers import forget_cached_settings

    monkeypatch.setenv("TUNELAB_MAX_UPLOAD_BYTES", "4096")
    forget_cached_settings()
    response = _upload(acme, "big.jsonl", jsonl(chat_rows(200)))
    assert response.status_code == 413 and "upload limit" in response.json()["detail"]
    assert _count(db) == 0 and _stored_files(settings_env) == []


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        ({"json": {"file": "x"}}, "multipart/form-data"),
        ({"files": {"other": ("a.jsonl", b"{}")}}, '"file"'),
    ],
)
def test_malformed_uploads_are_refused(acme, db, request_kwargs, message):
    response = acme.client.post("/api/datasets", **request_kwargs)
    assert response.status_code == 400 and message in response.json()["detail"]
    assert _count(db) == 0


def test_the_same_content_twice_is_recognised(acme, db, settings_env):
    content = jsonl(chat_rows(10))
    first = _upload(acme, "a.jsonl", content)
    again = _upload(acme, "renamed.jsonl", content, name="another name")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["duplicate"] is True
    assert _count(db) == 1 and len(_stored_files(settings_env)) == 1


def test_preview_pages_through_rows_with_line_numbers(acme):
    rows = chat_rows(30)
    dataset = _upload(acme, "chat.jsonl", jsonl(rows)).json()
    page = acme.client.get(f"/api/datasets/{dataset['id']}/preview", params={"offset": 25, "limit": 10}).json()
    assert page["total"] == 30 and [r["line"] for r in page["rows"]] == [26, 27, 28, 29, 30]
    assert page["rows"][0]["row"] == rows[25]
    assert acme.client.get(f"/api/datasets/{dataset['id']}/preview", params={"limit": 1000}).status_code == 422


def test_delete_is_refused_while_a_job_uses_the_dataset(acme, db, models_env, settings_env):
    dataset = _upload(acme, "chat.jsonl", jsonl(chat_rows(10))).json()
    job = acme.client.post(
        "/api/jobs", json={"spec": tiny_spec(), "dataset_id": dataset["id"], "queue": "nobody"}
    ).json()
    refused = acme.client.delete(f"/api/datasets/{dataset['id']}")
    assert refused.status_code == 409 and f"#{job['id']}" in refused.json()["detail"]
    acme.client.post(f"/api/jobs/{job['id']}/cancel")
    assert acme.client.delete(f"/api/datasets/{dataset['id']}").status_code == 204
    assert _count(db) == 0 and _stored_files(settings_env) == []
    assert db.get(Job, job["id"]).state == JobState.cancelled and db.get(Job, job["id"]).dataset_id is None


def test_viewers_read_but_cannot_upload_or_delete(make_account):
    member = make_account(team="acme", role="member")
    viewer = make_account(team="acme", role="viewer")
    dataset = _upload(member, "chat.jsonl", jsonl(chat_rows(5))).json()
    assert viewer.client.get(f"/api/datasets/{dataset['id']}").status_code == 200
    assert _upload(viewer, "mine.jsonl", jsonl(chat_rows(3))).status_code == 403
    assert viewer.client.delete(f"/api/datasets/{dataset['id']}").status_code == 403


def test_another_teams_dataset_is_not_found_anywhere(make_account):
    acme, globex = make_account(team="acme"), make_account(team="globex")
    dataset = _upload(acme, "chat.jsonl", jsonl(chat_rows(5))).json()
    for method, path in [("GET", ""), ("GET", "/preview"), ("GET", "/content"), ("DELETE", "")]:
        response = globex.client.request(method, f"/api/datasets/{dataset['id']}{path}")
        assert response.status_code == 404 and response.json() == {"detail": "dataset not found"}
    assert globex.client.get("/api/datasets").json() == []
    # The same file uploaded by another team is theirs alone, not a duplicate of acme's.
    theirs = _upload(globex, "chat.jsonl", jsonl(chat_rows(5)))
    assert theirs.status_code == 201 and theirs.json()["id"] != dataset["id"]


def test_content_downloads_the_file_as_uploaded(acme):
    content = (DATA / "sharegpt.jsonl").read_bytes()
    dataset = _upload(acme, "sharegpt.jsonl", content).json()
    response = acme.client.get(f"/api/datasets/{dataset['id']}/content")
    assert response.status_code == 200 and response.content == content
