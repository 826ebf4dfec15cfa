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


def test_a_random_search_from_the_form_draws_its_trials_and_can_be_cancelled(pages, make_account, db):
    acme = make_account(team="acme", role="member")
    dataset = add_dataset(db, acme, chat_rows(), name="colours.jsonl")
    page = pages.sign_in(acme.email)
    page.goto("/sweeps/new")
    page.select_option("#dataset", str(dataset.id))
    page.fill("#queue", "nobody")  # no worker serves it: the trials wait in the queue
    page.fill("#base-spec", json.dumps(BASE))
    page.check("input[name=strategy][value=random]")
    page.locator(".param-kind").nth(0).select_option("log_uniform")
    page.locator(".param-low").nth(0).fill("0.0001")
    page.locator(".param-high").nth(0).fill("0.01")
    page.locator(".param-kind").nth(1).select_option("choice")
    page.locator(".param-values").nth(1).fill("4, 8, 16")
    page.fill("#trials", "3")
    page.fill("#seed", "5")
    expect(page.locator("#trial-count")).to_have_text("3 trials")
    page.click("#launch")
    page.wait_for_url(re.compile(r".*/sweeps/\d+$"))
    expect(page.locator(".page-head")).to_contain_text("Random search of 3 trials over learning_rate, lora.r (seed 5)")
    expect(page.locator("#sweep-counts")).to_have_text("1 pending, 2 queued")
    cells = page.locator("#trials-table tbody tr td:nth-child(3)")
    assert all(1e-4 <= float(cells.nth(i).inner_text()) <= 1e-2 for i in range(3))

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-sweep")
    expect(page.locator("#sweep-state")).to_have_text("cancelled")
    expect(page.locator("#sweep-counts")).to_have_text("2 cancelled, 1 pending")
    expect(page.locator("#cancel-sweep")).to_have_count(0)
