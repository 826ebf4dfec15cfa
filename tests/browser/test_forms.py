"""Forms in the browser: a bad value is shown beside its field; tokens are shown once and
can be revoked; owners manage their team's members."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import screenshot

DOCS = Path(__file__).resolve().parents[2] / "docs"
from tests.helpers import TINY_MODEL, chat_rows, jsonl


def test_new_job_shows_each_error_beside_its_field(pages, make_account, db):
    member = make_account(team="acme", role="member")
    member.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(6)))})
    page = pages.sign_in(member.email)
    page.goto("/jobs/new")
    page.select_option("select[name='spec.base_model']", TINY_MODEL)
    page.fill("input[name='spec.learning_rate']", "5")
    page.fill("input[name='spec.max_seq_length']", "100000")
    page.click("#launch")
    expect(page.locator("[data-error-for='spec.learning_rate']")).to_contain_text("less than or equal to 1")
    expect(page.locator("input[name='spec.learning_rate']")).to_have_class("invalid")
    expect(page.locator("#launch")).to_be_enabled()
    page.fill("input[name='spec.learning_rate']", "0.0002")
    page.click("#launch")
    expect(page.locator("[data-error-for='spec.max_seq_length']")).to_contain_text("handles at most 4096 tokens")
    expect(page.locator("[data-error-for='spec.learning_rate']")).to_have_text("")
    screenshot(page, "new-job-errors")
    assert member.client.get("/api/jobs").json()["data"] == []


def test_a_token_is_shown_once_and_works_until_revoked(pages, make_account, app):
    from fastapi.testclient import TestClient

    member = make_account(team="acme", role="member")
    page = pages.sign_in(member.email)
    page.goto("/settings")
    page.fill("#token-form input[name=name]", "laptop")
    page.click("#token-form button")
    token = page.locator("#new-token-value")
    expect(token).to_have_text(re.compile(r"^tl_"))
    secret = token.text_content()
    screenshot(page, "settings")
    assert TestClient(app, headers={"Authorization": f"Bearer {secret}"}).get("/api/me").status_code == 200
    page.reload()
    expect(page.locator("#new-token")).to_be_hidden()
    assert secret not in page.content()
    row = page.locator("#tokens tr", has_text="laptop")
    expect(row.locator(".token-team")).to_have_text("acme")  # bound to the current team unless asked otherwise
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button:has-text('Revoke')").click()
    expect(page.locator("#tokens tr", has_text="laptop").locator("button")).to_have_text("Revoked")
    assert TestClient(app, headers={"Authorization": f"Bearer {secret}"}).get("/api/me").status_code == 401


def test_an_owner_adds_a_member_and_changes_their_role(pages, make_account):
    owner = make_account(team="acme", role="owner")
    newcomer = make_account(team="globex", role="member")
    page = pages.sign_in(owner.email)
    page.goto("/settings")
    form = page.locator("form.add-member")
    form.locator("input[name=email]").fill(newcomer.email)
    form.locator("select[name=role]").select_option("viewer")
    form.locator("button").click()
    row = page.locator("#teams tr", has_text=newcomer.email)
    expect(row.locator("select")).to_have_value("viewer")
    row.locator("select").select_option("member")
    expect(page.locator("#teams tr", has_text=newcomer.email).locator("select")).to_have_value("member")
    roles = {m["email"]: m["role"] for m in owner.client.get(f"/api/teams/{owner.team_id}/members").json()}
    assert roles[newcomer.email] == "member"


def test_a_classification_dataset_gets_classifier_defaults_on_the_new_job_page(pages, make_account, db):
    member = make_account(team="acme", role="member")
    labeled = [{"text": f"review {i}", "label": ["good", "bad"][i % 2]} for i in range(8)]
    reviews = member.client.post("/api/datasets", files={"file": ("reviews.jsonl", jsonl(labeled))}).json()
    chats = member.client.post("/api/datasets", files={"file": ("chats.jsonl", jsonl(chat_rows(6)))}).json()
    page = pages.sign_in(member.email)
    page.goto(f"/jobs/new?dataset={reviews['id']}")
    page.select_option("select[name='spec.base_model']", TINY_MODEL)
    packing = page.locator("select[name='spec.packing']")
    expect(packing).to_have_value("off")
    expect(page.locator("#model-help")).to_contain_text("trained as a classifier (no chat template)")
    expect(page.locator("#estimate-parts")).to_contain_text("class scores")
    expect(page.locator("#estimate-parts")).not_to_contain_text("logits")
    screenshot(page, "new-job-classification")

    page.select_option("#dataset", str(chats["id"]))
    expect(packing).to_have_value("auto")  # packs where the worker's attention kernel makes it free
    expect(page.locator("#model-help")).to_contain_text("has a chat template")
    expect(page.locator("#estimate-parts")).to_contain_text("logits")
    packing.select_option("on")  # the user's choice stays, whatever the data
    page.select_option("#dataset", str(reviews["id"]))
    page.select_option("#dataset", str(chats["id"]))
    expect(packing).to_have_value("on")


def test_a_job_on_two_nodes_of_two_devices_with_evaluation_settings_launched_from_the_form_waits_for_its_workers(
    pages, make_account, db
):
    member = make_account(team="acme", role="member")
    member.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(6)))})
    page = pages.sign_in(member.email)
    page.goto("/jobs/new")
    page.select_option("select[name='spec.base_model']", TINY_MODEL)
    page.fill("input[name='spec.num_devices']", "2")
    page.fill("input[name='spec.num_nodes']", "2")
    page.select_option("select[name='spec.parallelism']", "ddp")
    page.locator("#devices-section").screenshot(path=str(DOCS / "new-job-devices.png"))
    evaluation = page.locator("#evaluation-section")
    expect(evaluation.locator("input[name='spec.eval_samples']")).to_have_value("8")
    expect(evaluation).to_contain_text("Most tokens in each sample answer")
    evaluation.locator("input[name='spec.eval_split']").fill("0.2")
    evaluation.locator("input[name='spec.eval_samples']").fill("3")
    evaluation.locator("input[name='spec.eval_sample_max_new_tokens']").fill("20")
    evaluation.locator("input[name='spec.load_best_model_at_end']").check()
    evaluation.locator("select[name='spec.metric_for_best_model']").select_option("eval_mean_token_accuracy")
    evaluation.locator("input[name='spec.learning_check_at']").fill("0.3")
    evaluation.screenshot(path=str(DOCS / "new-job-evaluation.png"))
    page.click("#launch")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    expect(
        page.get_by_text("The job runs on 2 nodes at once and no live workers with 2 devices serve the queue 'default'")
    ).to_be_visible()
    job = member.client.get("/api/jobs").json()["data"][0]
    assert (job["spec"]["num_devices"], job["spec"]["num_nodes"], job["spec"]["parallelism"]) == (2, 2, "ddp")
    spec = job["spec"]
    assert (spec["eval_split"], spec["eval_samples"], spec["eval_sample_max_new_tokens"]) == (0.2, 3, 20)
    assert job["spec"]["load_best_model_at_end"] is True
    assert job["spec"]["metric_for_best_model"] == "eval_mean_token_accuracy"
    assert job["spec"]["learning_check_at"] == 0.3
