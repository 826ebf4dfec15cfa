"""A classifier job's evaluation on its page, live: the eval metrics chart from the step-0
baseline, and the confusion matrix redrawn at each evaluation while the job trains (a real
training run in this process, reporting to the database as a worker does); and the banner of a
run that does not learn."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.contract.spec import TrainingSpec
from app.core.blobs import blob_store
from app.core.tables import JobState
from app.jobs.artifacts import job_output_key
from app.jobs.states import transition
from tests.browser.conftest import screenshot
from tests.helpers import TINY_MODEL, add_dataset, add_job, warm_and_cool_rows
from worker.database_reporter import DatabaseReporter
from worker.ml import train

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def member(make_account):
    return make_account(team="acme", role="member")


def _running_classifier_job(db, member, tmp_path, name: str, **spec):
    rows = warm_and_cool_rows()
    dataset = add_dataset(db, member, rows, name="labels.jsonl")
    job = add_job(db, member, JobState.queued, name=name, dataset=dataset)
    job.spec = TrainingSpec(
        base_model=TINY_MODEL, batch_size=4, logging_steps=2, max_seq_length=64, eval_split=0.25, **spec
    ).model_dump(mode="json")
    transition(db, job, JobState.running)
    db.commit()
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return job, data


def _train_in_background(job, data, models_dir) -> threading.Thread:
    """Train the job's spec as its worker would, reporting to the database."""

    def run():
        reporter = DatabaseReporter(job.id, blob_store()).start()
        try:
            train(
                TrainingSpec.model_validate(job.spec),
                train_file=data,
                output_dir=blob_store().path(job_output_key(job.id)),  # where its worker writes
                reporter=reporter,
                models_dir=models_dir,
            )
        finally:
            reporter.close()

    thread = threading.Thread(target=run, name=f"train-job-{job.id}")
    thread.start()
    return thread


# Records every text the confusion matrix's caption shows, as the page changes it.
WATCH_CAPTION = """() => {
  window.captions = [];
  new MutationObserver((records) => {
    for (const r of records) for (const node of r.addedNodes) window.captions.push(node.textContent);
  }).observe(document.getElementById('confusion-step'), { childList: true });
}"""


def test_the_metric_charts_and_the_confusion_matrix_update_while_the_job_runs(pages, db, member, models_env, tmp_path):
    job, data = _running_classifier_job(
        db, member, tmp_path, "warm-or-cool", max_steps=60, learning_rate=3e-3, eval_steps=10
    )
    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    expect(page.locator("#evaluation")).to_be_hidden()  # nothing evaluated yet
    page.evaluate(WATCH_CAPTION)

    thread = _train_in_background(job, data, models_env)
    try:
        chart = page.get_by_test_id("eval-metrics-chart")
        expect(chart).to_have_attribute("data-baseline", "true", timeout=120_000)
        # Accuracy and macro F1 at steps 0, 10, ..., 60: 14 points once the run is done.
        expect(chart).to_have_attribute("data-points", "14", timeout=180_000)
    finally:
        thread.join()

    captions = page.evaluate("window.captions")
    assert captions[0] == "the base model (step 0)", captions
    assert captions[1:] == [f"at step {step}" for step in range(10, 70, 10)], "redrawn at every evaluation"
    matrix = page.get_by_test_id("confusion-matrix")
    cells = [int(text) for text in matrix.locator("tbody td").all_inner_texts()]
    assert len(cells) == 4 and sum(cells) == 16, "every held-out row in one cell"
    assert cells[0] + cells[3] == 16, "the classifier learned: all on the diagonal"
    expect(page.get_by_test_id("per-class").locator("tbody tr")).to_have_count(2)
    expect(page.get_by_test_id("verdict")).to_be_hidden()

    def labels(chart: str) -> list[str]:
        return page.evaluate(f"charts.of(document.getElementById('{chart}')).plot.series.slice(1).map((s) => s.label)")

    assert labels("eval-metrics-chart") == ["accuracy", "macro F1"]
    # The best evaluation by eval loss (the default metric_for_best_model) is marked on the loss chart.
    assert any(label.startswith("best (step ") for label in labels("loss-chart")), labels("loss-chart")
    screenshot(page, "job-evaluation")
    page.screenshot(path=str(DOCS / "job-evaluation.png"), full_page=True)


def test_a_run_that_does_not_learn_shows_a_banner_with_the_likely_causes(pages, db, member, models_env, tmp_path):
    job, data = _running_classifier_job(db, member, tmp_path, "frozen", max_steps=20, learning_rate=1e-9, eval_steps=5)
    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    _train_in_background(job, data, models_env).join()

    banner = page.get_by_test_id("verdict")
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner).to_contain_text("This run does not seem to learn")
    expect(banner).to_contain_text("no better than the base model's")
    expect(banner.locator("li")).to_have_count(3)
    expect(banner).to_contain_text("learning rate")
    screenshot(page, "job-not-learning")
    page.screenshot(path=str(DOCS / "job-not-learning.png"), full_page=True)
    page.reload()  # a page opened later shows it too
    expect(page.get_by_test_id("verdict")).to_be_visible()
