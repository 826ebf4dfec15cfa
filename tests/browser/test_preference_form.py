"""The new-job page offers the preference objectives with their settings, and its dataset picker
says which datasets fit the objective chosen."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, screenshot
from tests.helpers import TINY_MODEL, chat_rows, jsonl

PAIRS = [{"prompt": f"What colour is thing {i}?", "chosen": "Red.", "rejected": "Blue."} for i in range(6)]


def test_choosing_dpo_shows_its_settings_and_the_datasets_that_fit(pages, make_account, db):
    member = make_account(team="acme", role="member")
    chats = member.client.post("/api/datasets", files={"file": ("chats.jsonl", jsonl(chat_rows(6)))}).json()
    pairs = member.client.post("/api/datasets", files={"file": ("pairs.jsonl", jsonl(PAIRS))}).json()
    page = pages.sign_in(member.email)
    page.goto(f"/jobs/new?dataset={chats['id']}")
    page.select_option("select[name='spec.base_model']", TINY_MODEL)
    expect(page.locator("#preference-section")).to_be_hidden()
    expect(page.locator(f"#dataset option[value='{pairs['id']}']")).to_be_disabled()
    expect(page.locator(f"#dataset option[value='{pairs['id']}']")).to_contain_text("not for SFT")

    page.check("input[name='spec.objective'][value='dpo']")
    expect(page.locator("#preference-section")).to_be_visible()
    expect(page.locator("select[name='spec.preference.loss_type']")).to_be_visible()
    expect(page.locator("input[name='spec.preference.desirable_weight']")).to_be_hidden()
    expect(page.locator("input[name='spec.packing']")).to_be_hidden()
    expect(page.locator(f"#dataset option[value='{chats['id']}']")).to_be_disabled()
    expect(page.locator("#dataset")).to_have_value(str(pairs["id"]))  # the one that fits, chosen for the user
    page.fill("input[name='spec.preference.beta']", "0.25")
    reference_free = page.locator("input[name='spec.preference.reference_free']")
    expect(reference_free).not_to_be_checked()
    expect(page.locator("label.check-field", has=reference_free)).to_contain_text("no reference model")
    reference_free.check()
    screenshot(page, "new-job-dpo")
    objective_card = page.locator("section.card", has=page.locator("#preference-section"))
    objective_card.screenshot(path=str(SCREENSHOTS / "new-job-dpo-settings.png"))

    page.check("input[name='spec.objective'][value='kto']")
    expect(page.locator("select[name='spec.preference.loss_type']")).to_be_hidden()
    expect(reference_free).to_be_hidden()
    expect(reference_free).not_to_be_checked()  # KTO has no such setting: it is not sent
    expect(page.locator("input[name='spec.preference.desirable_weight']")).to_be_visible()
    page.check("input[name='spec.objective'][value='dpo']")
    reference_free.check()

    page.fill("input[name='spec.max_steps']", "2")
    page.click("#launch")
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))  # the new job's page, not /jobs/new
    job = member.client.get("/api/jobs").json()["data"][0]
    assert job["spec"]["objective"] == "dpo" and job["spec"]["preference"]["beta"] == 0.25
    assert job["spec"]["preference"]["reference_free"] is True
    assert job["dataset_id"] == pairs["id"]


def test_a_supervised_job_is_continued_with_dpo_from_the_form(pages, make_account, db):
    """The usual SFT-then-DPO chain on the pages: "Continue training" on the SFT job, objective DPO."""
    from app.core.blobs import blob_store
    from app.core.tables import Artifact, ArtifactKind, JobState
    from app.jobs.artifacts import job_output_key
    from tests.helpers import add_dataset, add_job

    member = make_account(team="acme", role="member")
    sft = add_job(db, member, JobState.succeeded, name="colours sft")
    key = f"{job_output_key(sft.id)}/final"
    with blob_store().writer(f"{key}/adapter_config.json") as handle:
        handle.write(b"{}")
    db.add(Artifact(job_id=sft.id, kind=ArtifactKind.adapter, step=12, blob_key=key, size_bytes=2, meta={}))
    db.commit()
    pairs = add_dataset(db, member, PAIRS, name="pairs.jsonl")

    page = pages.sign_in(member.email)
    page.goto(f"/jobs/new?continue={sft.id}")
    expect(page.locator("#continue-note")).to_contain_text("colours sft")
    expect(page.locator("#continue-note")).to_contain_text("or DPO on preference pairs (SFT, then DPO)")
    page.check("input[name='spec.objective'][value='dpo']")
    expect(page.locator("#dataset")).to_have_value(str(pairs.id))  # the pairs, which DPO trains on
    page.click("#launch")
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    job = member.client.get("/api/jobs").json()["data"][0]
    assert job["parent_job_id"] == sft.id and job["spec"]["objective"] == "dpo"
    assert job["dataset_id"] == pairs.id
