"""Resume and continue in the browser: a job cancelled from its page is resumed from its page
and its loss curve continues where it stopped, on the same chart; a succeeded job is continued
from its page into a new job, linked to it on both pages, that starts from its adapter."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Pages, screenshot
from tests.helpers import TINY_MODEL, SharedServices, chat_rows, jsonl, once

STEPS = 80


class Team:
    """One member's page, and the scenario's steps, each run once for the class (`once`)."""

    def __init__(self, pages: Pages, page, member, queue: str) -> None:
        self.pages, self.page, self.member, self.queue = pages, page, member, queue

    def api(self, path: str, **params):
        response = self.member.client.get(f"/api{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def losses(self, job_id: int) -> list[tuple[int, float]]:
        return [(p["step"], p["values"]["loss"]) for p in self.api(f"/jobs/{job_id}/metrics", split="train")]

    def messages(self, job_id: int) -> list[str]:
        return [e["message"] for e in self.api(f"/jobs/{job_id}/events", limit=1000)]

    @once
    def cancelled(self) -> tuple[int, int]:
        """A job cancelled from its page while it runs: (its id, the points on its chart then)."""
        member = self.member
        dataset = member.client.post("/api/datasets", files={"file": ("colours.jsonl", jsonl(chat_rows(48)))})
        spec = {
            "base_model": TINY_MODEL,
            "max_steps": STEPS,
            "learning_rate": 5e-3,
            "batch_size": 4,
            "logging_steps": 1,
            "save_steps": 1000,  # no checkpoint but the one the cancel makes
            "max_seq_length": 128,
        }
        body = {"spec": spec, "dataset_id": dataset.json()["id"], "queue": self.queue, "name": "colours v1"}
        job_id = member.client.post("/api/jobs", json=body).json()["id"]
        page = self.page
        page.goto(f"/jobs/{job_id}")
        chart = page.locator("#loss-chart")
        expect(chart).to_have_attribute("data-points", re.compile(r"^([3-9]|\d\d)$"), timeout=180_000)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#cancel-job")
        expect(page.locator("#job-state .state")).to_have_text("cancelled", timeout=60_000)
        return job_id, int(chart.get_attribute("data-points"))

    @once
    def resumed(self) -> int:
        """The cancelled job, resumed from its page (which stays open) until it succeeds."""
        job_id, _ = self.cancelled()
        page = self.page
        expect(page.locator("#resume-job")).to_be_visible()
        page.click("#resume-job")
        expect(page.locator("#job-state .state")).to_have_text("succeeded", timeout=300_000)
        return job_id

    @once
    def continued(self) -> int:
        """The succeeded job continued from its page for a few more steps; the new job's page is open."""
        parent = self.resumed()
        page = self.page
        page.goto(f"/jobs/{parent}")
        page.click("#continue-job")
        page.wait_for_url(re.compile(rf".*/jobs/new\?continue={parent}$"))
        expect(page.locator("#continue-note")).to_contain_text(f"Continues #{parent} colours v1")
        expect(page.locator("input[name='spec.max_steps']")).to_have_value(str(STEPS))  # filled in: now change it
        page.fill("input[name='spec.max_steps']", "6")
        page.fill("input[name='name']", "colours v1, continued")
        screenshot(page, "job-continue-form")
        page.click("#launch")
        page.wait_for_url(re.compile(r".*/jobs/\d+$"))
        return int(page.url.rsplit("/", 1)[1])


@pytest.fixture(scope="class")
def team(browser, migrated_database, shared_models_dir, redis_url, tmp_path_factory):
    with SharedServices(migrated_database, tmp_path_factory.mktemp("data"), shared_models_dir, redis_url) as services:
        server = services.serve()
        member = services.account(team="acme", role="member")
        services.workers.start()
        pages = Pages(browser, server)
        try:
            yield Team(pages, pages.sign_in(member.email), member, services.workers.queue)
        finally:
            pages.close()


class TestResumeAndContinueInTheBrowser:
    @pytest.fixture(autouse=True)
    def _no_javascript_errors(self, team):
        yield
        errors = list(team.pages.errors)
        team.pages.errors.clear()
        assert errors == [], "JavaScript errors on the pages"

    def test_a_cancelled_job_offers_resume_and_keeps_its_checkpoint(self, team):
        job_id, points = team.cancelled()
        page = team.page
        expect(page.locator("#resume-job")).to_be_visible()
        expect(page.locator("#cancel-job")).to_be_hidden()
        expect(page.locator("#checkpoints")).to_contain_text("Step ")
        job = team.api(f"/jobs/{job_id}")
        assert job["state"] == "cancelled" and 3 <= job["step"] < STEPS and points <= job["step"]
        screenshot(page, "job-cancelled-resumable")

    def test_resume_after_cancel_continues_the_same_curve_on_the_same_page(self, team):
        job_id, points_at_cancel = team.cancelled()
        stopped_at = team.api(f"/jobs/{job_id}")["step"]
        team.resumed()
        page = team.page
        # The page that was open all along follows the resumed run: every step once, no reload.
        expect(page.locator("#loss-chart")).to_have_attribute("data-points", str(STEPS), timeout=30_000)
        assert points_at_cancel < STEPS
        losses = team.losses(job_id)
        assert [step for step, _ in losses] == list(range(1, STEPS + 1)), "no gap, no duplicate step"
        # The same curve: the first step after the resume goes on from the checkpoint's weights,
        # it does not jump back up to the loss of a fresh start.
        first_loss, at_stop, after = losses[0][1], losses[stopped_at - 1][1], losses[stopped_at][1]
        assert after < first_loss * 0.9 and abs(after - at_stop) < 0.5 * first_loss
        expect(page.locator("#events")).to_contain_text(f"training continues from the checkpoint at step {stopped_at}")
        expect(page.locator("#events")).to_contain_text(f"Job succeeded after {STEPS} steps")
        expect(page.locator("#resume-job")).to_be_hidden()
        expect(page.locator("#continue-job")).to_be_visible()
        assert team.api(f"/jobs/{job_id}")["attempts"] == 1
        screenshot(page, "job-resumed")

    def test_continue_training_creates_a_job_linked_on_both_pages(self, team):
        parent = team.resumed()
        child = team.continued()
        page = team.page
        assert child != parent
        expect(page.locator("#job-lineage")).to_have_text(f"Continued from #{parent}")
        expect(page.locator("#job-state .state")).to_have_text("succeeded", timeout=240_000)
        expect(page.locator("#events")).to_contain_text(f"Starting from the trained weights of job #{parent}")
        job = team.api(f"/jobs/{child}")
        assert job["parent_job_id"] == parent and job["spec"]["max_steps"] == 6
        # It trains the parent's adapter further: its first loss is near the parent's last, far
        # below the parent's own first one (a fresh adapter's).
        parent_losses, child_losses = team.losses(parent), team.losses(child)
        assert child_losses[0][1] < 0.6 * parent_losses[0][1]
        screenshot(page, "job-continued")

        page.click(f"#job-lineage a:has-text('#{parent}')")
        page.wait_for_url(re.compile(rf".*/jobs/{parent}$"))
        expect(page.locator("#job-lineage")).to_have_text(f"Continued as #{child}")
        page.click(f"#job-lineage a:has-text('#{child}')")
        page.wait_for_url(re.compile(rf".*/jobs/{child}$"))
