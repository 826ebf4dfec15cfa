"""A team member's day in the browser: sign in, upload a good file and a bad one, launch a
job on a tiny model, watch the loss arrive on the chart, download the adapter, cancel a
second job; and a user of another team sees none of it."""

from __future__ import annotations

import re
import zipfile

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import TINY_MODEL, chat_rows, jsonl

BAD_FILE = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    b'{"mesages": [{"role": "user", "content": "hi"}]}\n'
    b'{"messages": [{"role": "user", "content": "hi"}]}\n'
)


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


def test_upload_launch_watch_download_and_cancel(pages, make_account, workers, tmp_path):
    member = make_account(team="acme", role="member")
    workers.start()
    page = pages.sign_in(member.email)
    expect(page.locator("#jobs-empty")).to_be_visible()
    screenshot(page, "dashboard-empty")

    # A bad file: every error with its line number, nothing stored.
    page.goto("/datasets")
    _upload(page, tmp_path, "broken.jsonl", BAD_FILE)
    errors = page.locator(".upload-errors")
    expect(errors).to_contain_text("2 problems to fix")
    expect(errors.locator("li").nth(0)).to_contain_text('line 2missing key "messages"')
    expect(errors.locator("li").nth(1)).to_contain_text("line 3no assistant message")
    screenshot(page, "datasets-upload-errors")
    expect(page.locator("#datasets-empty")).to_be_visible()

    # A good file.
    _upload(page, tmp_path, "colours.jsonl", jsonl(chat_rows(48)))
    expect(page.locator(".success")).to_contain_text("Uploaded colours.jsonl (48 rows · Chat messages)")
    expect(page.locator("#datasets-body tr")).to_have_count(1)
    page.click("#datasets-body a:has-text('colours.jsonl')")
    expect(page.locator("#preview .bubble.assistant").first).to_contain_text("The car is red.")
    screenshot(page, "dataset")

    # Launch a job and watch its loss arrive while it runs.
    job_id = _launch(page, max_steps=40, queue=workers.queue, name="colours v1")
    chart = page.locator("#loss-chart")
    expect(page.locator("#job-state .state")).to_have_text("running", timeout=120_000)
    expect(chart).to_have_attribute("data-points", re.compile(r"^([5-9]|[1-3]\d)$"), timeout=120_000)
    points_while_running = int(chart.get_attribute("data-points"))
    assert page.locator("#job-state .state").text_content() == "running" and points_while_running < 40
    screenshot(page, "job-running")
    expect(page.locator("#job-state .state")).to_have_text("succeeded", timeout=240_000)
    expect(chart).to_have_attribute("data-points", "40")
    expect(page.locator("#events")).to_contain_text("Job succeeded after 40 steps")
    screenshot(page, "job-succeeded")

    # Download the adapter from the page and check it loads as PEFT expects.
    with page.expect_download() as download_info:
        page.click("#downloads a:has-text('Adapter')")
    archive = tmp_path / "adapter.zip"
    download_info.value.save_as(archive)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path / "adapter")
    from peft import PeftConfig

    folder = tmp_path / "adapter" / f"tunelab-job-{job_id}-adapter"
    assert PeftConfig.from_pretrained(folder).base_model_name_or_path.endswith(TINY_MODEL)

    # Launch it again with many more steps, then cancel it from its page.
    page.click("text=Launch again…")
    expect(page.locator("input[name='spec.max_steps']")).to_have_value("40")
    page.fill("input[name='spec.max_steps']", "100000")
    page.fill("input[name='name']", "colours v2")
    page.click("#launch")
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    expect(page.locator("#job-state .state")).to_have_text("running", timeout=120_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    expect(page.locator("#job-state .state")).to_have_text("cancelled", timeout=60_000)
    expect(page.locator("#cancel-job")).to_be_hidden()

    # The dashboard lists both, with their states, and can compare them.
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
