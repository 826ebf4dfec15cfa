"""The dataset page's preview shows what training will see: tool definitions, calls and results."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import screenshot

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
