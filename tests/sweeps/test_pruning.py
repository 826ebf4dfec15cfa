"""Pruning: the median rule over stored metric points, and a trial whose eval loss is far
behind the finished trials' being stopped by its worker's reporter as a cancel stops a job."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.blobs import blob_store
from app.core.tables import Job, JobEvent, JobState
from app.jobs.states import transition
from app.jobs.timeline import MetricPoint, add_metrics
from app.sweeps.pruning import median_verdict
from app.sweeps.scheduling import after_trial
from tests.helpers import add_dataset, browser_sign_in, chat_rows, tiny_spec
from worker.database_reporter import DatabaseReporter

FINISHED = [[(2, 1.0), (4, 0.8)], [(2, 1.2), (4, 0.9)], [(2, 2.0), (4, 1.8)]]


def test_a_trial_worse_than_the_median_of_the_finished_ones_at_that_step_is_pruned():
    verdict = median_verdict([(2, 1.5)], FINISHED, direction="minimize")
    assert verdict is not None and (verdict.step, verdict.value, verdict.median) == (2, 1.5, 1.2)


def test_a_trial_at_or_better_than_the_median_goes_on():
    assert median_verdict([(2, 1.2)], FINISHED, direction="minimize") is None
    assert median_verdict([(2, 1.5), (4, 0.85)], FINISHED, direction="minimize") is None  # its best so far counts


def test_nothing_is_pruned_before_two_trials_have_finished_or_before_the_warmup():
    assert median_verdict([(2, 50.0)], FINISHED[:1], direction="minimize") is None
    assert median_verdict([(0, 50.0)], FINISHED, direction="minimize") is None
    assert median_verdict([], FINISHED, direction="minimize") is None


def test_maximizing_prunes_the_low_ones():
    assert median_verdict([(2, 1.1)], FINISHED, direction="maximize") is not None
    assert median_verdict([(2, 1.3)], FINISHED, direction="maximize") is None


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme", role="member")


def _sweep(acme, db, *, prune: bool) -> list[Job]:
    dataset = add_dataset(db, acme, chat_rows())
    body = {
        "base": {"spec": tiny_spec(eval_split=0.25, eval_steps=2), "dataset_id": dataset.id, "queue": "nobody"},
        "space": {"parameters": {"learning_rate": [1e-3, 2e-3, 0.5]}},
        "max_concurrent": 3,
        "prune": prune,
    }
    response = acme.client.post("/api/sweeps", json=body)
    assert response.status_code == 201, response.text
    jobs = list(db.scalars(select(Job).where(Job.sweep_id == response.json()["id"]).order_by(Job.sweep_trial)))
    for job, losses in zip(jobs[:2], ([(2, 1.0), (4, 0.8)], [(2, 1.2), (4, 0.9)]), strict=True):
        transition(db, job, JobState.running)
        add_metrics(db, job, [MetricPoint(step, "eval", {"eval_loss": loss}) for step, loss in losses])
        transition(db, job, JobState.succeeded)
    transition(db, jobs[2], JobState.running)
    db.commit()
    return jobs


def _report_eval(job: Job, step: int, loss: float) -> DatabaseReporter:
    """What the trial's worker does at an evaluation: the reporter writes the point, then the
    training loop asks whether to stop."""
    reporter = DatabaseReporter(job.id, blob_store())
    reporter.progress(step, 12)
    reporter.log({"eval_loss": loss}, step)
    reporter.flush()
    return reporter


def test_a_diverging_trial_is_stopped_by_the_sweep_and_shown_pruned(app, acme, db):
    jobs = _sweep(acme, db, prune=True)
    # The base model's baseline (step 0) is every trial's starting point, not this trial's best.
    assert not _report_eval(jobs[2], 0, 0.5).should_stop()
    assert not _report_eval(jobs[2], 1, 9.0).should_stop()  # before the warm-up step: never judged
    reporter = _report_eval(jobs[2], 2, 9.0)
    assert reporter.should_stop()
    db.expire_all()
    job = db.get(Job, jobs[2].id)
    assert job.state == JobState.cancelling and job.pruned_at_step == 2
    messages = list(db.scalars(select(JobEvent.message).where(JobEvent.job_id == job.id)))
    assert any(
        m.startswith("Pruned by the sweep at step 2: eval_loss 9 is above the median 1.1 of the finished trials")
        for m in messages
    ), messages
    transition(db, job, JobState.cancelled)  # as the worker ends it, and then advances its sweep
    db.commit()
    after_trial(job.id)
    sweep = acme.client.get(f"/api/sweeps/{job.sweep_id}").json()
    trial = next(t for t in sweep["trials"] if t["number"] == 2)
    assert (trial["status"], trial["pruned_at_step"], trial["best"]) == ("pruned", 2, False)
    assert sweep["best_trial"] == 0 and sweep["state"] == "finished"
    browser = TestClient(app)
    browser_sign_in(browser, acme.email)
    page = browser.get(f"/sweeps/{job.sweep_id}")
    assert page.status_code == 200 and "pruned @ 2" in page.text and "★ Best trial" in page.text
    trial_page = browser.get(f"/jobs/{job.id}")
    assert (
        f'Trial #2 of <a href="/sweeps/{job.sweep_id}">sweep #{job.sweep_id}</a>: pruned at step 2' in trial_page.text
    )


def test_without_pruning_a_diverging_trial_runs_on(acme, db):
    jobs = _sweep(acme, db, prune=False)
    assert not _report_eval(jobs[2], 2, 9.0).should_stop()
    db.expire_all()
    assert db.get(Job, jobs[2].id).state == JobState.running
