"""The compare page lines the jobs' last answers up by prompt, one column per job."""

from __future__ import annotations

from playwright.sync_api import expect

from app.core.tables import JobState
from app.jobs.timeline import add_samples
from tests.browser.conftest import screenshot
from tests.helpers import add_dataset, add_job, chat_rows


def _rows(answers: dict[str, str]) -> list[dict]:
    return [
        {"row": i, "prompt": prompt, "reference": "The sky is blue.", "answer": answer, "cut": False, "loss": 0.5}
        for i, (prompt, answer) in enumerate(answers.items())
    ]


def test_the_compared_jobs_answers_stand_side_by_side(pages, make_account, db):
    member = make_account(team="acme", role="member")
    dataset = add_dataset(db, member, chat_rows(6))
    first, second = (add_job(db, member, JobState.succeeded, name=name, dataset=dataset) for name in ("slow", "fast"))
    add_samples(db, first, "generation", 8, _rows({"What colour is the sky?": "Blue, I think."}))
    add_samples(db, second, "generation", 8, _rows({"What colour is the sky?": "The sky is blue."}))
    db.commit()

    page = pages.sign_in(member.email)
    page.goto(f"/compare?jobs={first.id},{second.id}")
    table = page.get_by_test_id("compare-samples")
    # In the page's order of the jobs, newest first, as the table of settings above.
    expect(table.locator("thead th")).to_have_text(["Prompt", "Reference", f"#{second.id} fast", f"#{first.id} slow"])
    cells = table.locator("tbody tr").first.locator("td")
    expect(cells.nth(2)).to_contain_text("The sky is blue.")
    expect(cells.nth(3)).to_contain_text("Blue, I think.")
    screenshot(page, "compare-samples")
