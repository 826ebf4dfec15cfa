"""The dataset page's preview shows what training will see: tool definitions, calls and results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import jsonl

TOOLS_FILE = Path(__file__).parents[1] / "datasets" / "data" / "sharegpt_tools.jsonl"


def test_a_sharegpt_tool_calling_file_shows_its_tools_calls_and_results(pages, make_account):
    member = make_account(team="acme", role="member")
    dataset = member.client.post("/api/datasets", files={"file": ("tools.jsonl", TOOLS_FILE.read_bytes())}).json()
    page = pages.sign_in(member.email)
    page.goto(f"/datasets/{dataset['id']}")
    first, second = page.locator(".preview-row").nth(0), page.locator(".preview-row").nth(1)
    expect(first.locator("details.tools summary")).to_have_text("Tools: get_weather")
    expect(second.locator("details.tools summary")).to_have_text("Tools: get_weather, convert_currency")
    expect(second.locator(".bubble.system")).to_contain_text("You are a travel assistant.")
    call = first.locator(".bubble.assistant").nth(0)
    expect(call.locator("code")).to_have_text('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    expect(first.locator(".bubble.tool")).to_contain_text('{"temperature": 18, "sky": "cloudy"}')
    first.locator("details.tools summary").click()
    expect(first.locator("details.tools code")).to_contain_text('"description": "Current weather of a city"')
    screenshot(page, "dataset-tools-preview")


DATA = Path(__file__).parents[1] / "datasets" / "data"


@pytest.mark.parametrize(
    "filename, chosen, rejected",
    [
        ("preference_openai.jsonl", "Today in San Francisco", "It is not particularly cold"),
        ("preference_sharegpt.jsonl", "Red is a primary colour.", "Pink."),
        ("preference.jsonl", "blue.", "green."),
    ],
)
def test_a_preference_pair_shows_its_prompt_then_chosen_and_rejected_side_by_side(
    pages, make_account, filename, chosen, rejected
):
    member = make_account(team="acme", role="member")
    dataset = member.client.post("/api/datasets", files={"file": (filename, (DATA / filename).read_bytes())}).json()
    page = pages.sign_in(member.email)
    page.goto(f"/datasets/{dataset['id']}")
    first = page.locator(".preview-row").nth(0)
    expect(first.locator(".bubbles").first.locator(".bubble.user")).to_have_count(1)
    expect(first.locator(".pair-side.chosen")).to_contain_text(chosen)
    expect(first.locator(".pair-side.rejected")).to_contain_text(rejected)
    chosen_box = first.locator(".pair-side.chosen").bounding_box()
    rejected_box = first.locator(".pair-side.rejected").bounding_box()
    assert chosen_box["x"] + chosen_box["width"] <= rejected_box["x"] and chosen_box["y"] == rejected_box["y"]
    answers = page.locator(".stat-card", has_text="answer length, chosen · rejected")
    expect(answers).to_contain_text(re.compile(r"\d+ · \d+ chars"))
    expect(answers).to_contain_text(re.compile(r"chosen the longer in \d+% of pairs"))
    if filename == "preference_openai.jsonl":
        screenshot(page, "dataset-preference-preview")


def test_kto_feedback_shows_each_answer_marked_good_or_bad(pages, make_account):
    member = make_account(team="acme", role="member")
    content = (DATA / "feedback.jsonl").read_bytes()
    dataset = member.client.post("/api/datasets", files={"file": ("feedback.jsonl", content)}).json()
    page = pages.sign_in(member.email)
    page.goto(f"/datasets/{dataset['id']}")
    rows = page.locator(".preview-row")
    expect(rows.nth(0).locator(".pair-side.chosen .pair-title")).to_have_text("good answer")
    expect(rows.nth(1).locator(".pair-side.rejected .pair-title")).to_have_text("bad answer")
    expect(rows.nth(1).locator(".pair-side.rejected")).to_contain_text("green.")


def test_unbalanced_kto_feedback_is_flagged_on_the_dataset_page(pages, make_account):
    member = make_account(team="acme", role="member")
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i < 9} for i in range(10)]
    content = jsonl(rows)
    dataset = member.client.post("/api/datasets", files={"file": ("skewed.jsonl", content)}).json()
    page = pages.sign_in(member.email)
    page.goto(f"/datasets/{dataset['id']}")
    expect(page.locator("#dataset-warnings .notice")).to_contain_text("the labels are unbalanced (9 good, 1 bad)")
