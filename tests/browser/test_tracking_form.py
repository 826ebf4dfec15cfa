"""The new-job page's "Experiment tracking" section: its fields become the spec's integrations,
a bad one is shown beside its field, and a cloned job brings its trackers along."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import TINY_MODEL, chat_rows, jsonl


def test_tracking_fields_become_the_jobs_integrations(pages, make_account, db):
    member = make_account(team="acme", role="member")
    member.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(6)))})
    page = pages.sign_in(member.email)
    page.goto("/jobs/new")
    page.select_option("select[name='spec.base_model']", TINY_MODEL)
    page.fill("input[name='tracking.wandb.project']", "support/bot")
    page.fill("input[name='tracking.mlflow.tracking_uri']", "file:///etc")
    page.click("#launch")
    expect(page.locator("[data-error-for='tracking.wandb.project']")).to_contain_text("letters, digits")
    expect(page.locator("[data-error-for='tracking.mlflow.tracking_uri']")).to_contain_text("http:// or https://")
    expect(page.locator("input[name='tracking.mlflow.tracking_uri']")).to_have_class("invalid")
    assert member.client.get("/api/jobs").json()["data"] == []

    page.fill("input[name='tracking.wandb.project']", "support-bot")
    page.fill("input[name='tracking.wandb.tags']", "nightly, tiny")
    page.fill("input[name='tracking.mlflow.tracking_uri']", "http://mlflow.internal:5000")
    page.fill("input[name='tracking.mlflow.experiment_name']", "colours")
    page.click("#launch")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    (job,) = member.client.get("/api/jobs").json()["data"]
    spec = member.client.get(f"/api/jobs/{job['id']}").json()["spec"]
    assert spec["integrations"] == [
        {
            "type": "wandb",
            "wandb": {"project": "support-bot", "name": None, "entity": None, "tags": ["nightly", "tiny"]},
        },
        {"type": "mlflow", "mlflow": {"tracking_uri": "http://mlflow.internal:5000", "experiment_name": "colours"}},
    ]

    page.goto(f"/jobs/new?clone={job['id']}")
    expect(page.locator("input[name='tracking.wandb.tags']")).to_have_value("nightly, tiny")
    expect(page.locator("input[name='tracking.mlflow.experiment_name']")).to_have_value("colours")
    page.locator("#tracking-section").screenshot(path="docs/new-job-tracking.png")
    screenshot(page, "new-job-tracking-clone")


def test_the_job_page_offers_the_tracking_logs_for_download(pages, make_account, db, tmp_path):
    import zipfile

    from torch.utils.tensorboard import SummaryWriter

    from app.core.blobs import blob_store
    from app.core.tables import JobState
    from app.jobs.artifacts import job_output_key, record_tracking_files
    from tests.helpers import add_job, tensorboard_scalars

    member = make_account(team="acme", role="member")
    job = add_job(db, member, JobState.succeeded, name="tracked")
    store = blob_store()
    folder = store.path(job_output_key(job.id)) / "tracking"
    writer = SummaryWriter(log_dir=str(folder / "tensorboard"))
    for step, loss in ((1, 2.5), (2, 2.0), (3, 1.5)):
        writer.add_scalar("train/loss", loss, step)
    writer.close()
    record_tracking_files(db, store, job_id=job.id, step=3, path=folder)
    db.commit()

    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    link = page.locator("#downloads a:has-text('Tracking logs')")
    expect(link).to_be_visible()
    with page.expect_download() as download_info:
        link.click()
    archive = tmp_path / "tracking.zip"
    download_info.value.save_as(archive)
    with zipfile.ZipFile(archive) as zipped:
        assert all(name.startswith(f"tunelab-job-{job.id}-tracking/") for name in zipped.namelist())
        zipped.extractall(tmp_path / "tracking")
    assert tensorboard_scalars(tmp_path / "tracking", "train/loss") == [(1, 2.5), (2, 2.0), (3, 1.5)]
