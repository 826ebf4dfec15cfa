"""A job's page, on a job whose timeline is written by hand (no training needed): the learning
rate axis, the raw loss line under the smoothed one, and the events list."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import add_job


@pytest.fixture
def finished_job(db, make_account):
    from app.core.tables import JobState
    from app.jobs import timeline

    member = make_account(team="acme", role="member")
    job = add_job(db, member, JobState.succeeded, name="warmup-then-decay")
    steps = 40
    points = []
    for step in range(1, steps + 1):
        rate = 2e-4 * min(1.0, step / 8) * (1 - (step - 1) / steps)  # warmup, then linear decay: 2.5e-5 ... 2e-4
        loss = 3.0 / (1 + step / 10) + (0.4 if step % 2 else -0.4)  # a noisy curve, as real losses are
        points.append(timeline.MetricPoint(step, "train", {"loss": loss, "learning_rate": rate, "epoch": step / 10}))
    timeline.add_metrics(db, job, points)
    for i in range(1, 31):
        timeline.add_event(db, job, f"event number {i}")
    db.commit()
    return member, job


def test_the_learning_rate_axis_reads_real_rates(pages, finished_job):
    member, job = finished_job
    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    expect(page.get_by_test_id("loss-chart")).to_have_attribute("data-points", "40")

    ticks = page.evaluate("charts.of(document.getElementById('lr-chart')).plot.axes[1]._values")
    assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), ticks
    assert all(re.fullmatch(r"0|\d(\.\d+)?e-\d+", tick) for tick in ticks), ticks
    assert any(tick.endswith("e-4") for tick in ticks), ticks
    screenshot(page, "job-charts")


def test_the_raw_loss_line_is_plainly_visible_under_the_smoothed_one(pages, finished_job):
    member, job = finished_job
    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    expect(page.get_by_test_id("loss-chart")).to_have_attribute("data-points", "40")

    raw = page.evaluate(
        """() => {
          const s = charts.of(document.getElementById('loss-chart')).plot.series.find((s) => s.label === 'train (raw)');
          return { stroke: s._stroke, width: s.width, shown: s.show };
        }"""
    )
    alpha = float(re.fullmatch(r"rgba\(\d+, \d+, \d+, ([\d.]+)\)", raw["stroke"]).group(1))
    assert raw["shown"] and alpha >= 0.5 and raw["width"] >= 1.5, raw


def test_the_first_events_stay_in_sight_newest_on_top(pages, finished_job):
    member, job = finished_job
    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")

    items = page.locator("#events li span")
    expect(items).to_have_count(30)
    expect(items.first).to_have_text("event number 30")
    expect(items.last).to_have_text("event number 1")
    assert page.evaluate("document.getElementById('events').scrollTop") == 0, "nothing scrolls the list by itself"


def test_a_dpo_job_charts_its_rewards_accuracy_and_log_probabilities(pages, db, make_account, finished_job):
    from app.core.tables import Dataset, JobState
    from app.jobs import timeline

    member, sft_job = finished_job
    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{sft_job.id}")
    expect(page.get_by_test_id("loss-chart")).to_have_attribute("data-points", "40")
    expect(page.locator("#preference-charts")).to_be_hidden()  # a supervised job has none

    job = add_job(db, member, JobState.succeeded, name="dpo-after-sft", dataset=db.get(Dataset, sft_job.dataset_id))
    job.spec = {**job.spec, "objective": "dpo"}
    points = []
    for step in range(1, 21):
        margin = step / 10
        values = {"loss": 0.69 - step / 40, "reward_chosen": margin / 2, "reward_rejected": -margin / 2}
        values.update(reward_margin=margin, reward_accuracy=min(1.0, 0.5 + step / 30), logp_chosen=-20 + step / 4)
        values.update(logp_rejected=-20 - step / 2, learning_rate=5e-5, epoch=step / 20)
        points.append(timeline.MetricPoint(step, "train", values))
        if step % 5 == 0:
            points.append(
                timeline.MetricPoint(
                    step, "eval", {"eval_loss": 0.6, "eval_reward_margin": margin, "eval_reward_accuracy": 0.8}
                )
            )
    timeline.add_metrics(db, job, points)
    db.commit()
    page.goto(f"/jobs/{job.id}")
    expect(page.locator("#preference-charts")).to_be_visible()
    expect(page.locator("#job-meta")).to_contain_text("LORA DPO")
    labels = page.evaluate(
        """() => ['reward-chart', 'reward-accuracy-chart', 'logp-chart'].map((id) =>
             charts.of(document.getElementById(id)).plot.series.slice(1).map((s) => s.label))"""
    )
    assert labels == [["chosen", "rejected", "margin", "eval margin"], ["train", "eval"], ["chosen", "rejected"]]
    screenshot(page, "job-dpo")
