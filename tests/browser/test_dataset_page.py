"""A dataset's page: its statistics cards, the length histogram with its axes, and deleting it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import jsonl

TEXT_ROWS = [{"text": "word " * (5 + 7 * i)} for i in range(40)]
CLASSIFICATION_ROWS = [
    {"text": f"review number {i} " * (1 + i % 9), "label": ["good", "bad"][i % 2]} for i in range(30)
]


@pytest.mark.parametrize("name, rows", [("text", TEXT_ROWS), ("classification", CLASSIFICATION_ROWS)])
def test_rows_without_messages_show_only_real_cards_and_a_histogram_with_axes(pages, make_account, name, rows):
    member = make_account(team="acme", role="member")
    dataset = member.client.post("/api/datasets", files={"file": (f"{name}.jsonl", jsonl(rows))}).json()
    page = pages.sign_in(member.email)
    page.goto(f"/datasets/{dataset['id']}")

    cards = page.locator("#stat-cards")
    expect(cards.locator(".stat-card")).to_have_count(4)
    expect(cards).not_to_contain_text("null")
    expect(cards).not_to_contain_text("messages per row")

    histogram = dataset["stats"]["length_histogram"]
    most = max(bucket["rows"] for bucket in histogram)
    expect(page.locator("#histogram .bar")).to_have_count(len(histogram))
    expect(page.get_by_test_id("histogram-y").locator("span")).to_have_text(
        [str(most), str(most / 2).removesuffix(".0"), "0"]
    )
    x_ticks = [text for text in page.get_by_test_id("histogram-x").locator("span").all_text_contents() if text]
    assert len(x_ticks) >= 2 and x_ticks[0] == str(histogram[0]["from"]), x_ticks
    expect(page.locator("#histogram-figure")).to_contain_text("characters per row")
    expect(page.locator("#histogram-figure")).to_contain_text("rows")
    screenshot(page, f"dataset-{name}")


def test_deleting_a_dataset_says_it_is_gone(pages, make_account):
    member = make_account(team="acme", role="member")
    dataset = member.client.post("/api/datasets", files={"file": ("notes.jsonl", jsonl(TEXT_ROWS))}).json()
    page = pages.sign_in(member.email)
    page.goto(f"/datasets/{dataset['id']}")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-dataset")

    page.wait_for_url("**/datasets")
    expect(page.locator("#toast")).to_have_text("Deleted notes.jsonl.")
    expect(page.locator(f"tr[data-dataset='{dataset['id']}']")).to_have_count(0)
    assert member.client.get(f"/api/datasets/{dataset['id']}").status_code == 404
