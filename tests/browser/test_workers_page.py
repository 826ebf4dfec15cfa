"""The Workers page with real Celery workers: each one listed with its queue and device, the job
one of them trains (linked, for its team), and the page following it as the job ends."""

from __future__ import annotations

from playwright.sync_api import expect
from sqlalchemy import select

from app.core.tables import WorkerProcess
from tests.browser.conftest import screenshot
from tests.helpers import add_dataset, chat_rows, tiny_spec, wait_for


def _worker_name(db, process) -> str:
    db.expire_all()
    return db.scalar(select(WorkerProcess.name).where(WorkerProcess.pid == process.pid))


def test_the_workers_page_lists_the_running_workers_and_follows_the_job_one_runs(pages, make_account, db, workers):
    acme = make_account(team="acme", role="member")
    trainer = workers.start()
    evaluator = workers.start(queue=f"{workers.queue}-eval")
    names = [_worker_name(db, trainer), _worker_name(db, evaluator)]

    dataset = add_dataset(db, acme, chat_rows())
    body = {"spec": tiny_spec(max_steps=5000), "dataset_id": dataset.id, "queue": workers.queue, "name": "colours"}
    job = acme.client.post("/api/jobs", json=body).json()
    assert job["warning"] is None, "a live worker serves the queue"
    wait_for(
        lambda: any(
            w["job"] and w["job"]["id"] == job["id"] for w in acme.client.get("/api/workers").json()["workers"]
        ),
        timeout=120,
        message="the worker to say it runs the job",
    )

    page = pages.sign_in(acme.email)
    page.click("nav >> text=Workers")
    rows = page.locator("#workers-body tr")
    expect(rows).to_have_count(2)
    trainer_row = page.locator("#workers-body tr", has_text=names[0])
    expect(trainer_row).to_contain_text(workers.queue)
    expect(trainer_row).to_contain_text("CPU:")  # these test machines have no GPU, and the page says so
    expect(trainer_row.locator(f"a[href='/jobs/{job['id']}']")).to_have_text("colours")
    evaluator_row = page.locator("#workers-body tr", has_text=names[1])
    expect(evaluator_row).to_contain_text(f"{workers.queue}-eval")
    expect(evaluator_row).to_contain_text("idle")
    expect(page.locator("#queues-body tr", has_text=f"{workers.queue}-eval")).to_contain_text("1")
    expect(page.locator("#worker-counts")).to_contain_text("2 live workers")
    screenshot(page, "workers")  # docs/workers.png is a copy of it

    assert acme.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    # The page refreshes itself: the worker goes back to idle once the job has stopped.
    expect(trainer_row).to_contain_text("idle", timeout=60_000)
    expect(trainer_row.locator("a")).to_have_count(0)


def test_a_job_on_a_queue_nobody_serves_shows_a_banner_saying_what_to_run(pages, make_account, db):
    acme = make_account(team="acme", role="member")
    dataset = add_dataset(db, acme, chat_rows())
    body = {"spec": tiny_spec(), "dataset_id": dataset.id, "queue": "a100-nobody", "name": "waits"}
    job = acme.client.post("/api/jobs", json=body).json()

    page = pages.sign_in(acme.email)
    expect(page.locator("#gpu-counts")).to_have_text("No GPU worker live")
    expect(page.locator("#jobs-body tr", has_text="waits")).to_contain_text("no live worker serves its queue")
    screenshot(page, "dashboard-gpu-counts")
    page.goto(f"/jobs/{job['id']}")
    banner = page.locator("#job-queue-warning")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("tunelab worker --queues a100-nobody")
    screenshot(page, "job-queue-warning")
    banner.locator("a").click()
    expect(page.locator("#queues-body tr", has_text="a100-nobody")).to_contain_text("none: start one")
    expect(page.locator("#workers-empty")).to_be_visible()
    screenshot(page, "workers-none")
