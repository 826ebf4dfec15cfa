"""A user in two teams: the browser works in one team at a time (a persistent, explicit
choice), API tokens can be bound to one team, and an unbound token is told what to add."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.accounts.teams import find_team, set_membership
from app.core.tables import Dataset, Job, Role, User
from tests.helpers import add_dataset, add_job, browser_sign_in, chat_rows, jsonl, tiny_spec


@pytest.fixture
def two_teams(db, make_account, models_env):
    """ada: owner of acme, and member of globex (whose owner is gus); a dataset and a job in each."""
    ada = make_account(team="acme", role="owner", email="ada@acme.test")
    gus = make_account(team="globex", role="owner", email="gus@globex.test")
    set_membership(
        db, team=find_team(db, "globex"), user=db.scalar(select(User).where(User.id == ada.user_id)), role=Role.member
    )
    db.commit()
    objects = {
        "acme_dataset": add_dataset(db, ada, chat_rows(8), name="acme-data.jsonl"),
        "globex_dataset": add_dataset(db, gus, chat_rows(9), name="globex-data.jsonl"),
        "acme_job": add_job(db, ada, "succeeded", name="acme-job"),
        "globex_job": add_job(db, gus, "succeeded", name="globex-job"),
    }
    return ada, gus, objects


def _browser(app, email: str) -> tuple[TestClient, str]:
    client = TestClient(app)
    return client, browser_sign_in(client, email)


def _upload(client, name: str, rows: int, headers=None, **fields):
    files = {"file": (name, jsonl(chat_rows(rows)))}
    return client.post("/api/datasets", files=files, data=fields, headers=headers or {})


def test_an_unbound_token_of_a_two_team_user_is_told_exactly_what_to_add(two_teams):
    ada, gus, objects = two_teams
    refused = _upload(ada.client, "new.jsonl", 10)
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert "`team_id`" in detail and f"{ada.team_id} (acme)" in detail and f"{gus.team_id} (globex)" in detail
    launch = ada.client.post("/api/jobs", json={"spec": tiny_spec(), "dataset_id": objects["acme_dataset"].id})
    assert launch.status_code == 400 and "`team_id`" in launch.json()["detail"]

    named = _upload(ada.client, "new.jsonl", 10, team_id=str(gus.team_id))
    assert named.status_code == 201 and named.json()["team_id"] == gus.team_id
    # An unbound token sees both teams' work.
    names = {job["name"] for job in ada.client.get("/api/jobs").json()["data"]}
    assert names == {"acme-job", "globex-job"}


def test_a_token_bound_to_a_team_works_there_with_no_team_id_and_sees_nothing_else(app, two_teams):
    ada, gus, objects = two_teams
    created = ada.client.post("/api/tokens", json={"name": "globex key", "team_id": gus.team_id})
    assert created.status_code == 201 and created.json()["team_name"] == "globex"
    bound = TestClient(app, headers={"Authorization": f"Bearer {created.json()['token']}"})

    uploaded = _upload(bound, "bound.jsonl", 11)
    assert uploaded.status_code == 201 and uploaded.json()["team_id"] == gus.team_id
    launched = bound.post("/api/jobs", json={"spec": tiny_spec(), "dataset_id": uploaded.json()["id"]})
    assert launched.status_code == 201 and launched.json()["team_id"] == gus.team_id

    # acme's objects answer 404, as any other team's; naming acme does not help.
    assert bound.get(f"/api/jobs/{objects['acme_job'].id}").status_code == 404
    assert bound.get(f"/api/datasets/{objects['acme_dataset'].id}").status_code == 404
    assert bound.get(f"/api/jobs/{objects['globex_job'].id}").status_code == 200
    elsewhere = _upload(bound, "x.jsonl", 12, team_id=str(ada.team_id))
    assert elsewhere.status_code == 404
    assert {job["team_id"] for job in bound.get("/api/jobs").json()["data"]} == {gus.team_id}
    assert [team["name"] for team in bound.get("/api/teams").json()] == ["globex"]
    assert [team["name"] for team in bound.get("/api/me").json()["teams"]] == ["globex"]
    assert bound.get(f"/api/teams/{ada.team_id}/members").status_code == 404

    # A bound token cannot mint a token that sees more than its team.
    minted = bound.post("/api/tokens", json={"name": "escape"})
    assert minted.status_code == 201 and minted.json()["team_id"] == gus.team_id
    assert bound.post("/api/tokens", json={"name": "escape", "team_id": ada.team_id}).status_code == 404

    listed = {token["name"]: token["team_name"] for token in ada.client.get("/api/tokens").json()}
    assert listed["globex key"] == "globex" and listed["tests"] is None


def test_a_token_cannot_be_bound_to_a_team_its_user_is_not_in(two_teams):
    ada, gus, _objects = two_teams
    assert gus.client.post("/api/tokens", json={"team_id": ada.team_id}).status_code == 404


def test_the_browser_works_in_its_current_team_and_the_choice_persists(app, db, two_teams):
    ada, gus, objects = two_teams
    browser, csrf = _browser(app, ada.email)
    with browser:
        page = browser.get("/datasets").text
        assert "acme-data.jsonl" in page and "globex-data.jsonl" not in page  # first team: acme
        uploaded = _upload(browser, "from-page.jsonl", 13, headers={"X-CSRF-Token": csrf})
        assert uploaded.status_code == 201 and uploaded.json()["team_id"] == ada.team_id

        switched = browser.post("/team", data={"team_id": gus.team_id, "csrf_token": csrf}, follow_redirects=False)
        assert switched.status_code == 303
        new_job = browser.get("/jobs/new").text
        assert "globex-data.jsonl" in new_job and "acme-data.jsonl" not in new_job
        dashboard = browser.get("/").text
        assert "globex-job" in dashboard and "acme-job" not in dashboard
        launched = browser.post(
            "/api/jobs",
            json={"spec": tiny_spec(), "dataset_id": objects["globex_dataset"].id},
            headers={"X-CSRF-Token": csrf},
        )
        assert launched.status_code == 201 and launched.json()["team_id"] == gus.team_id
        # "Launch again" of the other team's job is not offered in this team.
        assert browser.get(f"/jobs/new?clone={objects['acme_job'].id}").status_code == 404
        # Its page offers to switch instead of showing it.
        other = browser.get(f"/jobs/{objects['acme_job'].id}").text
        assert "This job is in team acme" in other and "Switch to acme" in other

    # Signed in again (another browser): still globex.
    again, _csrf = _browser(app, ada.email)
    with again:
        assert "globex-job" in again.get("/").text
        # A page's team travels with its API calls: a tab still in acme keeps working in acme.
        in_acme = _upload(again, "tab.jsonl", 14, headers={"X-CSRF-Token": _csrf, "X-Tunelab-Team": str(ada.team_id)})
        assert in_acme.status_code == 201 and in_acme.json()["team_id"] == ada.team_id
    db.expire_all()
    assert db.get(User, ada.user_id).current_team_id == gus.team_id


def test_switching_to_a_team_one_is_not_in_is_refused(app, two_teams, make_account):
    ada, gus, _objects = two_teams
    stranger = make_account(team="initech", role="owner")
    browser, csrf = _browser(app, ada.email)
    with browser:
        refused = browser.post("/team", data={"team_id": stranger.team_id, "csrf_token": csrf}, follow_redirects=False)
        assert refused.status_code == 404
        assert browser.post("/team", data={"team_id": stranger.team_id}, follow_redirects=False).status_code == 403
        assert browser.get(f"/api/jobs?team={stranger.team_id}").status_code == 404
        # Pages are the current team's whatever they are asked: the header's switch is the one way.
        assert (
            "globex-job" not in browser.get(f"/?team={gus.team_id}", headers={"X-Tunelab-Team": str(gus.team_id)}).text
        )
        assert browser.get(f"/api/jobs?team={gus.team_id}").json()["data"][0]["name"] == "globex-job"


def test_a_user_removed_from_their_current_team_falls_back_to_another(app, db, two_teams):
    ada, gus, _objects = two_teams
    browser, csrf = _browser(app, ada.email)
    with browser:
        browser.post("/team", data={"team_id": gus.team_id, "csrf_token": csrf})
        assert "globex-job" in browser.get("/").text
        assert gus.client.delete(f"/api/teams/{gus.team_id}/members/{ada.user_id}").status_code == 200
        # A tab still open on globex cannot upload there any more, nor elsewhere unnoticed.
        stale = _upload(browser, "stale.jsonl", 16, headers={"X-CSRF-Token": csrf, "X-Tunelab-Team": str(gus.team_id)})
        assert stale.status_code == 404 and "reload the page" in stale.json()["detail"]
        page = browser.get("/").text
        assert "acme-job" in page and "globex-job" not in page
        uploaded = _upload(browser, "after.jsonl", 15, headers={"X-CSRF-Token": csrf})
        assert uploaded.status_code == 201 and uploaded.json()["team_id"] == ada.team_id
    db.expire_all()
    assert db.scalar(select(Job).where(Job.name == "globex-job")).team_id == gus.team_id
    assert db.scalar(select(Dataset).where(Dataset.name == "after.jsonl")).team_id == ada.team_id
    assert db.scalar(select(Dataset).where(Dataset.name == "stale.jsonl")) is None


def test_the_openai_client_works_with_a_bound_token_and_is_told_what_to_add_without(app, two_teams):
    import openai
    from openai import OpenAI

    ada, gus, objects = two_teams

    def client(token: str) -> OpenAI:
        http = TestClient(app, base_url="http://testserver")
        return OpenAI(base_url="http://testserver/v1", api_key=token, http_client=http, max_retries=0)

    content = jsonl(chat_rows(16))
    with pytest.raises(openai.BadRequestError) as refused:
        client(ada.token).files.create(file=("colours.jsonl", content), purpose="fine-tune")
    assert "`team_id`" in str(refused.value) and f"{gus.team_id} (globex)" in str(refused.value)

    key = ada.client.post("/api/tokens", json={"name": "globex key", "team_id": gus.team_id}).json()["token"]
    bound = client(key)
    uploaded = bound.files.create(file=("colours.jsonl", content), purpose="fine-tune")
    job = bound.fine_tuning.jobs.create(model=tiny_spec()["base_model"], training_file=uploaded.id, suffix="x")
    assert job.status == "queued" and job.organization_id == "globex"
    listed = {j.id for j in bound.fine_tuning.jobs.list().data}
    assert listed == {job.id, f"ftjob-{objects['globex_job'].id}"}  # globex's jobs, none of acme's

    named = client(ada.token).files.create(
        file=("colours.jsonl", content), purpose="fine-tune", extra_body={"team_id": ada.team_id}
    )
    assert ada.client.get(f"/api/datasets/{named.id.removeprefix('file-')}").json()["team_id"] == ada.team_id


@pytest.mark.parametrize(
    "referer, next_path, lands_on",
    [
        ("http://testserver/datasets?page=2", "", "/datasets?page=2"),  # the same page, in the other team
        ("http://testserver/jobs/7", "", "/"),  # an object of the old team: back to its list
        ("http://testserver/datasets/7", "", "/datasets"),
        ("http://testserver/jobs/new?clone=7", "", "/jobs/new"),
        ("https://elsewhere.example/jobs", "", "/"),  # never off the site
        ("", "/jobs/7", "/jobs/7"),  # the other-team page asks to go to the object
        ("", "//elsewhere.example/x", "/"),
        ("", "/\\elsewhere.example", "/"),
    ],
)
def test_switching_goes_back_to_a_page_of_this_site_that_shows_in_the_new_team(
    app, two_teams, referer, next_path, lands_on
):
    ada, gus, _objects = two_teams
    browser, csrf = _browser(app, ada.email)
    with browser:
        response = browser.post(
            "/team",
            data={"team_id": gus.team_id, "csrf_token": csrf, "next": next_path},
            headers={"Referer": referer} if referer else {},
            follow_redirects=False,
        )
    assert response.status_code == 303 and response.headers["location"] == lands_on
