"""One team cannot read or change another team's rows through any endpoint: every API route
with an object in its path is called by an outsider with the ids of another team's objects
and must answer 404, exactly like a missing object; every list leaves them out."""

from __future__ import annotations

import re

import pytest

from app.core.tables import Artifact, Job, JobState, WebhookDelivery, WebhookEndpoint
from app.jobs.states import transition
from tests.helpers import add_dataset, chat_rows, tiny_spec

SECRET = "acme-secret-colours"


@pytest.fixture
def acme_objects(make_account, db, models_env):
    """A team with a dataset, a finished job, a checkpoint, an API token and a webhook with a delivery."""
    owner = make_account(team="acme", role="owner")
    dataset = add_dataset(db, owner, chat_rows(), name=f"{SECRET}.jsonl")
    job_id = owner.client.post(
        "/api/jobs",
        json={"spec": tiny_spec(), "dataset_id": dataset.id, "name": SECRET, "suffix": "secret", "queue": "nobody"},
    ).json()["id"]
    job = db.get(Job, job_id)
    transition(db, job, JobState.running)
    transition(db, job, JobState.succeeded)
    artifact = Artifact(job_id=job.id, kind="checkpoint", step=6, blob_key=f"jobs/{job.id}/checkpoints/step-6")
    db.add(artifact)
    webhook = WebhookEndpoint(
        team_id=owner.team_id,
        url=f"https://hooks.acme.test/{SECRET}",
        description=SECRET,
        event_types=["fine_tuning.job.succeeded"],
        secret="whsec_" + "A" * 44,
    )
    db.add(webhook)
    db.flush()
    event = {"id": "evt_1", "object": "event", "type": "fine_tuning.job.succeeded", "data": {"id": SECRET}}
    db.add(WebhookDelivery(endpoint_id=webhook.id, event_id="evt_1", event_type=event["type"], payload=event))
    db.commit()
    token_id = owner.client.get("/api/tokens").json()[0]["id"]
    invitation = owner.client.post(f"/api/teams/{owner.team_id}/invitations", json={"email": "new@acme.test"})
    model = next(m["id"] for m in owner.client.get("/v1/models").json()["data"] if m["id"].startswith("ft:"))
    sweep = owner.client.post(
        "/api/sweeps",
        json={
            "name": SECRET,
            "base": {"spec": tiny_spec(), "dataset_id": dataset.id, "queue": "nobody"},
            "space": {"parameters": {"learning_rate": [1e-3, 1e-2]}},
        },
    )
    assert sweep.status_code == 201, sweep.text
    return {
        "owner": owner,
        "params": {
            "token_id": token_id,
            "team_id": owner.team_id,
            "user_id": owner.user_id,
            "dataset_id": dataset.id,
            "job_id": job.id,
            "artifact_id": artifact.id,
            "file_id": f"file-{dataset.id}",
            "model": model,
            "invitation_id": invitation.json()["id"],
            "webhook_id": webhook.id,
            "sweep_id": sweep.json()["id"],
        },
    }


def _api_routes(app) -> list[tuple[str, str]]:
    return [(path, method.upper()) for path, methods in app.openapi()["paths"].items() for method in methods]


def _fill(path: str, params: dict) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        assert name in params, f"{path}: add an id for {{{name}}} to this test so the route is checked"
        if name == "job_id" and path.startswith("/v1/"):
            return f"ftjob-{params['job_id']}"
        return str(params[name])

    return re.sub(r"\{(\w+)\}", value, path)


def test_every_route_with_another_teams_id_answers_404(app, acme_objects, make_account):
    outsider = make_account(team="globex", role="owner")
    routes = [(path, method) for path, method in _api_routes(app) if "{" in path]
    assert len(routes) >= 20
    for path, method in routes:
        url = _fill(path, acme_objects["params"])
        body = None
        if (path.endswith("/members") and method == "PUT") or (path.endswith("/invitations") and method == "POST"):
            body = {"email": outsider.email, "role": "member"}
        elif path.endswith(("/classify", "/predict")):
            body = {"text": "is this theirs?"}
        elif path.endswith("/evaluations") and method == "POST":
            body = {"dataset_id": acme_objects["params"]["dataset_id"]}
        elif path.endswith("/webhooks") and method == "POST":
            body = {"url": "https://hooks.globex.test/", "event_types": ["fine_tuning.job.failed"]}
        elif "/webhooks/" in path and method == "PATCH":
            body = {"enabled": False}
        elif path.endswith("/exports/gguf"):
            body = {"quantization": "q8_0"}
        response = outsider.client.request(method, url, json=body)
        assert response.status_code == 404, f"{method} {url} answered {response.status_code}: {response.text[:200]}"
        assert SECRET not in response.text
    # Compare names its jobs in the query string.
    for path in ("/api/compare", "/api/compare/samples"):
        response = outsider.client.get(path, params={"jobs": acme_objects["params"]["job_id"]})
        assert response.status_code == 404 and SECRET not in response.text, path


def test_missing_objects_answer_exactly_like_another_teams(app, acme_objects, make_account):
    outsider = make_account(team="globex", role="owner")
    missing = {
        name: (999_999 if isinstance(value, int) else re.sub(r"\d+", "999999", value))
        for name, value in acme_objects["params"].items()
    }
    for path in (
        "/api/jobs/{job_id}",
        "/api/datasets/{dataset_id}",
        "/v1/files/{file_id}",
        "/v1/fine_tuning/jobs/{job_id}",
        "/api/sweeps/{sweep_id}",
    ):
        theirs = outsider.client.get(_fill(path, acme_objects["params"]))
        absent = outsider.client.get(_fill(path, missing))
        assert (theirs.status_code, theirs.json()) == (absent.status_code, absent.json())


def test_lists_leave_other_teams_objects_out(app, acme_objects, make_account):
    outsider = make_account(team="globex", role="owner")
    lists = [
        (path, method)
        for path, method in _api_routes(app)
        if "{" not in path
        and method == "GET"
        and path not in ("/healthz", "/api/stream", "/api/compare", "/api/compare/samples")
    ]
    assert {"/api/jobs", "/api/datasets", "/v1/files", "/v1/fine_tuning/jobs", "/v1/models"} <= {p for p, _ in lists}
    for path, _method in lists:
        response = outsider.client.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code}"
        assert SECRET not in response.text and "ftjob-" not in response.text, f"GET {path} shows another team's work"


@pytest.mark.parametrize(
    "page",
    [
        "/jobs/{job_id}",
        "/datasets/{dataset_id}",
        "/jobs/new?clone={job_id}",
        "/sweeps/{sweep_id}",
        "/sweeps/new?clone={job_id}",
    ],
)
def test_pages_with_another_teams_id_answer_404(app, acme_objects, make_account, page):
    from fastapi.testclient import TestClient

    from tests.helpers import browser_sign_in

    outsider = make_account(team="globex", role="owner")
    browser = TestClient(app)
    browser_sign_in(browser, outsider.email)
    response = browser.get(page.format(**acme_objects["params"]), headers={"Accept": "text/html"})
    assert response.status_code == 404 and SECRET not in response.text
    compare = browser.get(f"/compare?jobs={acme_objects['params']['job_id']}")
    assert compare.status_code == 200 and SECRET not in compare.text
