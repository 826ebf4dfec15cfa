"""A sweep launched from its form and trained by a real worker: the form refuses a bad value
beside its field, then launches a 4-trial grid; the sweep page follows it to the end and shows
the trials ranked, the best marked, and the scatter plot."""

from __future__ import annotations

import json
import re

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import add_dataset, chat_rows

BASE = {"method": "lora", "max_steps": 4, "batch_size": 4, "logging_steps": 2, "max_seq_length": 128}


def test_a_grid_sweep_launched_from_the_form_ends_ranked_with_its_best_trial(pages, make_account, db, workers):
    acme = make_account(team="acme", role="member")
    workers.start()
    dataset = add_dataset(db, acme, chat_rows(), name="colours.jsonl")

    page = pages.sign_in(acme.email)
    page.click("nav >> text=Sweeps")
    expect(page.locator(".empty-note")).to_contain_text("No sweep yet")
    page.click("text=New sweep")
    page.fill("input[name=name]", "colours lr × rank")
    page.select_option("#dataset", str(dataset.id))
    page.fill("#queue", workers.queue)
    page.fill("#base-spec", json.dumps({**BASE, "eval_split": 0.25, "eval_steps": 2}))
    values = page.locator(".param-values")
    values.nth(0).fill("1e-4, 2e-2")
    values.nth(1).fill("4, 0")
    expect(page.locator("#trial-count")).to_have_text("4 trials")
    screenshot(page, "sweep-new")
    page.click("#launch")
    expect(page.locator('[data-error-for="space.parameters"]')).to_contain_text("lora.r=0) is not a valid job")

    values.nth(1).fill("4, 8")
    page.click("#launch")
    page.wait_for_url(re.compile(r".*/sweeps/\d+$"))
    expect(page.locator("#sweep-counts")).to_contain_text("2 queued")  # at most 2 at once: two wait their turn
    expect(page.locator("#sweep-counts")).to_contain_text("2 pending")

    # The page reloads itself as trials end.
    expect(page.locator("#sweep-state")).to_have_text("finished", timeout=400_000)
    expect(page.locator("#sweep-counts")).to_have_text("4 succeeded")
    rows = page.locator("#trials-table tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(0)).to_have_class("best")
    expect(rows.nth(0)).to_contain_text("★ best")
    losses = [float(rows.nth(i).locator("td.num").inner_text()) for i in range(4)]
    assert losses == sorted(losses)
    expect(page.locator("#best-trial")).to_contain_text("Best trial")
    expect(page.locator("#sweep-plot .point")).to_have_count(4)
    expect(page.locator("#sweep-plot .point.best")).to_have_count(1)
    screenshot(page, "sweep")  # docs/sweep.png is a copy of it

    page.click(".plot-axis >> text=lora.r")
    expect(page.locator("#sweep-plot .axis-label")).to_have_text("lora.r")
    page.click("nav >> text=Sweeps")
    expect(page.locator("#sweeps-table tbody tr")).to_have_count(1)
    expect(page.locator("#sweeps-table")).to_contain_text("colours lr × rank")
