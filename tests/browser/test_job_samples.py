"""A job's page while a real worker trains it: the samples table fills in at the first
evaluation and moves on at each one without a reload, with the base model's answers beside;
then the finished job is evaluated on another dataset from its page."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import chat_rows, jsonl, tiny_spec


def test_the_samples_table_updates_while_the_job_runs(pages, make_account, workers):
    member = make_account(team="acme", role="member")
    workers.start()
    dataset = member.client.post("/api/datasets", files={"file": ("colours.jsonl", jsonl(chat_rows()))}).json()
    other = member.client.post("/api/datasets", files={"file": ("more.jsonl", jsonl(chat_rows(12)))})
    assert other.status_code == 201, other.text
    spec = tiny_spec(max_steps=24, eval_split=0.25, eval_steps=6, eval_samples=4, eval_sample_max_new_tokens=12)
    job = member.client.post(
        "/api/jobs", json={"spec": spec, "dataset_id": dataset["id"], "queue": workers.queue}
    ).json()

    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job['id']}")
    samples = page.get_by_test_id("samples")
    caption = page.locator("#samples-caption")
    expect(caption).to_contain_text("at step 6", timeout=240_000)
    assert page.locator("#job-state .state").text_content() == "running", "the table filled in while training"
    rows = page.locator("#samples-table tbody tr")
    expect(rows).to_have_count(4)
    first_prompts = rows.locator("td:nth-child(1)").all_text_contents()
    assert all("What colour is the" in prompt for prompt in first_prompts)
    expect(rows.first.locator("td:nth-child(4)")).not_to_have_text("–")  # the base model's answer
    expect(samples.locator(".badge.bad")).to_have_count(1)
    expect(samples.locator(".badge.good")).to_have_count(1)

    # A later evaluation, with no reload (the page shows the newest: under load it may skip one).
    expect(caption).to_contain_text(re.compile(r"at step (12|18|24),"), timeout=120_000)
    expect(page.locator("#samples-table thead")).to_contain_text(re.compile(r"Answer at step (12|18|24)"))
    assert sorted(rows.locator("td:nth-child(1)").all_text_contents()) == sorted(first_prompts), "the same prompts"
    page.locator("#samples-order").select_option("best")
    losses = [float(text.split()[0]) for text in rows.locator("td:nth-child(5)").all_text_contents()]
    assert losses == sorted(losses)
    expect(page.locator("#job-state .state")).to_have_text("succeeded", timeout=240_000)
    expect(caption).to_contain_text("at step 24")
    screenshot(page, "job-samples")
    samples.screenshot(path="docs/job-samples.png")

    # Evaluate the finished job on another dataset from its page.
    expect(page.locator("#evaluate-form")).to_be_visible()
    page.locator("#evaluate-dataset").select_option(label="more.jsonl (12 rows)")
    page.locator("#evaluate-job").click()
    result = page.locator("#evaluations li[data-state=succeeded]")
    expect(result).to_contain_text("more.jsonl", timeout=240_000)
    expect(result).to_contain_text("loss")
    page.locator("#evaluations-card").screenshot(path="docs/job-evaluations.png")
