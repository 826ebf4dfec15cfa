"""A team member's day in the browser: sign in, upload a good file and a bad one, launch a
job on a tiny model, watch the loss arrive on the chart, download the adapter, cancel a
second job; and a user of another team sees none of it."""

from __future__ import annotations

import re
import zipfile

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Pages, screenshot
from tests.helpers import TINY_MODEL, SharedServices, chat_rows, jsonl, once

VALUE_PART = b'{"messages": [{"role": "user", "content": [{"type": "text", "value": "hi"}]}, {"role": "assistant", "content": "hello"}]}\n'
BAD_FILE = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    b'{"mesages": [{"role": "user", "content": "hi"}]}\n'
    b'{"messages": [{"role": "user", "content": "hi"}]}\n'
) + VALUE_PART * 40  # the same mistake on 40 rows


def _upload(page, tmp_path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    page.set_input_files("#file-input", str(path))


def _launch(page, *, max_steps: int, queue: str, name: str) -> int:
    page.goto("/jobs/new")
    page.select_option("select[name='spec.base_model']", TINY_MODEL)
    page.fill("input[name='name']", name)
    page.fill("input[name='spec.max_steps']", str(max_steps))
    page.fill("input[name='spec.learning_rate']", "0.005")
    page.fill("input[name='spec.batch_size']", "4")
    page.fill("input[name='spec.max_seq_length']", "128")
    page.click("details.advanced summary")
    page.fill("input[name='spec.logging_steps']", "1")
    page.fill("input[name='queue']", queue)
    expect(page.locator("#estimate-total")).to_contain_text("GiB")
    page.click("#launch")
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


class Journey:
    """One member's browser page for the class, and the steps of the day that several tests
    need: each runs once, in the first test that needs it (`once`)."""

    def __init__(self, pages: Pages, page, files, queue: str) -> None:
        self.pages = pages
        self.page = page
        self.files = files
        self.queue = queue

    def show(self, job_id: int) -> None:
        """The job's page; one already open stays open (to see it change live)."""
        if not self.page.url.endswith(f"/jobs/{job_id}"):
            self.page.goto(f"/jobs/{job_id}")

    @once
    def dataset(self) -> None:
        self.page.goto("/datasets")
        _upload(self.page, self.files, "colours.jsonl", jsonl(chat_rows(48)))
        expect(self.page.locator(".success")).to_contain_text("Uploaded colours.jsonl (48 rows · Chat messages)")

    @once
    def first_job(self) -> int:
        """Launched from the form; its page is open when this returns."""
        self.dataset()
        return _launch(self.page, max_steps=40, queue=self.queue, name="colours v1")

    @once
    def first_job_succeeded(self) -> int:
        job_id = self.first_job()
        self.show(job_id)
        expect(self.page.locator("#job-state .state")).to_have_text("succeeded", timeout=240_000)
        return job_id

    def launch_again(self) -> None:
        """The form of "Launch again…" from the first job's page."""
        self.show(self.first_job_succeeded())
        self.page.click("text=Launch again…")

    @once
    def second_job(self) -> int:
        """The first job launched again with many more steps; its page is open when this returns."""
        self.launch_again()
        expect(self.page.locator("input[name='spec.max_steps']")).to_have_value("40")  # filled in: now change it
        self.page.fill("input[name='spec.max_steps']", "100000")
        self.page.fill("input[name='name']", "colours v2")
        self.page.click("#launch")
        self.page.wait_for_url(re.compile(r".*/jobs/\d+$"))
        return int(self.page.url.rsplit("/", 1)[1])

    @once
    def second_job_cancelled(self) -> int:
        """Cancelled from its page while it runs."""
        job_id = self.second_job()
        self.show(job_id)
        expect(self.page.locator("#job-state .state")).to_have_text("running", timeout=120_000)
        self.page.once("dialog", lambda dialog: dialog.accept())
        self.page.click("#cancel-job")
        expect(self.page.locator("#job-state .state")).to_have_text("cancelled", timeout=60_000)
        return job_id


@pytest.fixture(scope="class")
def journey(browser, migrated_database, shared_models_dir, redis_url, tmp_path_factory):
    with SharedServices(migrated_database, tmp_path_factory.mktemp("data"), shared_models_dir, redis_url) as services:
        server = services.serve()
        member = services.account(team="acme", role="member")
        services.workers.start()
        pages = Pages(browser, server)
        try:
            page = pages.sign_in(member.email)
            yield Journey(pages, page, tmp_path_factory.mktemp("files"), services.workers.queue)
        finally:
            pages.close()


class TestAMembersDayInTheBrowser:
    """One member, signed in once for the class, through the day in order: each test checks
    one thing. The first two come before anything is uploaded: they see an empty team."""

    @pytest.fixture(autouse=True)
    def _no_javascript_errors(self, journey):
        yield
        errors = list(journey.pages.errors)
        journey.pages.errors.clear()
        assert errors == [], "JavaScript errors on the pages"

    def test_a_new_members_dashboard_is_empty(self, journey):
        page = journey.page
        page.goto("/")
        expect(page.locator("#jobs-empty")).to_be_visible()
        screenshot(page, "dashboard-empty")

    def test_a_file_with_errors_is_refused_with_every_error_by_line_and_nothing_is_stored(self, journey):
        page = journey.page
        page.goto("/datasets")
        _upload(page, journey.files, "broken.jsonl", BAD_FILE)
        errors = page.locator(".upload-errors")
        expect(errors).to_contain_text("42 problems to fix")
        expect(errors.locator("li")).to_have_count(3)
        expect(errors.locator("li").nth(0)).to_contain_text('line 2missing key "messages"')
        expect(errors.locator("li").nth(1)).to_contain_text("line 3no assistant message")
        # The same mistake on forty rows is one item: its first lines, the message and how many rows.
        expect(errors.locator("li").nth(2)).to_have_text(
            'lines 4, 5, 6, 7, 8, …message 1 (user): content part 1 has no "text" '
            '(found "value": did you mean "text"?) (40 rows)'
        )
        screenshot(page, "datasets-upload-errors")
        expect(page.locator("#datasets-empty")).to_be_visible()

    def test_a_good_file_is_uploaded_listed_and_previewed(self, journey):
        page = journey.page
        journey.dataset()
        expect(page.locator("#datasets-body tr")).to_have_count(1)
        page.click("#datasets-body a:has-text('colours.jsonl')")
        expect(page.locator("#preview .bubble.assistant").first).to_contain_text("The car is red.")
        screenshot(page, "dataset")

    def test_the_loss_arrives_on_the_chart_while_the_job_runs(self, journey):
        page = journey.page
        journey.first_job()
        chart = page.locator("#loss-chart")
        expect(page.locator("#job-state .state")).to_have_text("running", timeout=120_000)
        expect(chart).to_have_attribute("data-points", re.compile(r"^([5-9]|[1-3]\d)$"), timeout=120_000)
        points_while_running = int(chart.get_attribute("data-points"))
        assert page.locator("#job-state .state").text_content() == "running" and points_while_running < 40
        screenshot(page, "job-running")

    def test_the_finished_job_shows_every_point_and_its_success(self, journey):
        page = journey.page
        journey.first_job_succeeded()
        expect(page.locator("#loss-chart")).to_have_attribute("data-points", "40")
        expect(page.locator("#events")).to_contain_text("Job succeeded after 40 steps")
        screenshot(page, "job-succeeded")

    def test_the_adapter_downloads_from_the_job_page_and_loads_as_peft_expects(self, journey, tmp_path):
        from peft import PeftConfig

        page = journey.page
        job_id = journey.first_job_succeeded()
        journey.show(job_id)
        with page.expect_download() as download_info:
            page.click("#downloads a:has-text('Adapter')")
        archive = tmp_path / "adapter.zip"
        download_info.value.save_as(archive)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp_path / "adapter")
        folder = tmp_path / "adapter" / f"tunelab-job-{job_id}-adapter"
        assert PeftConfig.from_pretrained(folder).base_model_name_or_path.endswith(TINY_MODEL)

    def test_launch_again_fills_the_form_with_the_jobs_settings(self, journey):
        journey.launch_again()
        expect(journey.page.locator("input[name='spec.max_steps']")).to_have_value("40")

    def test_a_running_job_is_cancelled_from_its_page(self, journey):
        job_id = journey.second_job_cancelled()
        assert job_id != journey.first_job(), "a new job, not the first one again"
        expect(journey.page.locator("#cancel-job")).to_be_hidden()

    def test_the_dashboard_lists_both_jobs_with_their_states_and_compares_them(self, journey):
        page = journey.page
        journey.first_job_succeeded()
        journey.second_job_cancelled()
        page.goto("/")
        rows = page.locator("#jobs-body tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("cancelled")
        expect(rows.nth(1)).to_contain_text("succeeded")
        screenshot(page, "dashboard")
        rows.nth(0).locator("input[type=checkbox]").check()
        rows.nth(1).locator("input[type=checkbox]").check()
        page.click("#compare-selected")
        expect(page.locator("#compare-chart canvas")).to_have_count(1)
        screenshot(page, "compare")


def test_the_dashboard_follows_jobs_live_without_reloading(pages, make_account, workers, tmp_path):
    member = make_account(team="acme", role="member")
    workers.start()
    page = pages.sign_in(member.email)
    dataset = member.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(24)))}).json()
    expect(page.locator("#live")).to_have_class(re.compile("on"))
    job = member.client.post(
        "/api/jobs",
        json={
            "spec": {
                "base_model": TINY_MODEL,
                "max_steps": 30,
                "batch_size": 4,
                "logging_steps": 1,
                "max_seq_length": 128,
            },
            "dataset_id": dataset["id"],
            "queue": workers.queue,
        },
    ).json()
    row = page.locator(f"tr[data-job='{job['id']}']")
    expect(row).to_be_visible()
    expect(row.locator(".state")).to_have_text("running", timeout=120_000)
    expect(row.locator(".progress-cell small")).to_contain_text("/ 30", timeout=60_000)
    expect(row.locator(".state")).to_have_text("succeeded", timeout=240_000)
    screenshot(page, "dashboard-live")


def test_a_user_of_another_team_sees_none_of_it(pages, make_account):
    acme = make_account(team="acme", role="member")
    globex = make_account(team="globex", role="member")
    dataset = acme.client.post("/api/datasets", files={"file": ("secret.jsonl", jsonl(chat_rows(6)))}).json()
    job = acme.client.post(
        "/api/jobs", json={"spec": {"base_model": TINY_MODEL}, "dataset_id": dataset["id"], "queue": "nobody"}
    ).json()

    page = pages.sign_in(globex.email)
    expect(page.locator("#jobs-empty")).to_be_visible()
    expect(page.locator("#jobs-body tr")).to_have_count(0)
    page.goto("/datasets")
    expect(page.locator("#datasets-empty")).to_be_visible()
    for path in (f"/jobs/{job['id']}", f"/datasets/{dataset['id']}", f"/jobs/new?clone={job['id']}"):
        response = page.goto(path)
        assert response.status == 404
        expect(page.locator("h1")).to_have_text("Not found")
    page.goto("/jobs/new")
    expect(page.locator("#dataset option")).to_have_count(0)
    screenshot(page, "other-team")


def test_viewers_see_but_cannot_change(pages, make_account):
    member = make_account(team="acme", role="member")
    viewer = make_account(team="acme", role="viewer")
    dataset = member.client.post("/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(6)))}).json()
    member.client.post(
        "/api/jobs", json={"spec": {"base_model": TINY_MODEL}, "dataset_id": dataset["id"], "queue": "nobody"}
    )
    page = pages.sign_in(viewer.email)
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(page.locator("a:has-text('New job').button")).to_have_count(0)
    page.goto("/datasets")
    expect(page.locator("#dropzone")).to_have_count(0)
    page.goto(f"/datasets/{dataset['id']}")
    expect(page.locator("#delete-dataset")).to_be_hidden()
    page.goto("/jobs/new")
    expect(page.locator("#launch")).to_be_disabled()
