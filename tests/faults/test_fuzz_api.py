"""Property-based fuzzing of every operation of the app's own OpenAPI document: whatever
a client sends, the answer is never a 500 (schemathesis, a bounded number of cases each)."""

from __future__ import annotations

import hypothesis
import schemathesis

from tests.helpers import chat_rows, jsonl

CASES_PER_OPERATION = 12


def test_no_request_to_any_operation_answers_500(app, make_account):
    member = make_account(team="acme", role="member")
    member.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(6)))})
    headers = {"Authorization": f"Bearer {member.token}"}
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    server_errors: list[str] = []

    for loaded in schema.get_all_operations():
        operation = loaded.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def answer_is_not_a_server_error(case) -> None:
            response = case.call(headers=headers)
            if response.status_code >= 500:
                server_errors.append(
                    f"{response.status_code} {case.method} {case.formatted_path} {case.as_curl_command()}"
                )

        answer_is_not_a_server_error()

    assert server_errors == []
    from fastapi.testclient import TestClient

    health = TestClient(app).get("/healthz")
    assert health.status_code == 200 and health.json()["database"] == "ok", "the server is still healthy"
