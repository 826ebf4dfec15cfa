"""Names a user chose are data, never markup: a dataset or job named like HTML that would end
or hijack the page's embedded JSON still shows as text, and every page keeps working."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.helpers import TINY_MODEL, chat_rows, jsonl

DATASET_NAME = "<!--<script>"
JOB_NAME = "</script><script>window.hijacked = 1</script>"


def test_names_that_look_like_markup_show_as_text_on_every_page(pages, make_account):
    member = make_account(team="acme", role="member")
    upload = member.client.post(
        "/api/datasets", files={"file": ("c.jsonl", jsonl(chat_rows(6)))}, data={"name": DATASET_NAME}
    )
    assert upload.status_code == 201, upload.text
    spec = {"base_model": TINY_MODEL, "max_steps": 1}
    body = {"spec": spec, "dataset_id": upload.json()["id"], "name": JOB_NAME, "queue": "nobody-serves-this"}
    job = member.client.post("/api/jobs", json=body)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]

    page = pages.sign_in(member.email)
    expect(page.locator("body")).to_contain_text(JOB_NAME)  # the dashboard's table, drawn by its script
    for path, shown in (
        ("/datasets", DATASET_NAME),
        (f"/datasets/{upload.json()['id']}", DATASET_NAME),
        (f"/jobs/{job_id}", JOB_NAME),
        (f"/compare?jobs={job_id}", JOB_NAME),
    ):
        page.goto(path)
        expect(page.locator("body")).to_contain_text(shown)
        assert page.evaluate("window.hijacked") is None, f"{path} ran a script from a name"
    page.goto("/jobs/new")
    expect(page.locator("select[name='dataset_id']")).to_contain_text(DATASET_NAME)
