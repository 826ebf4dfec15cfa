"""The interactive API reference at /api/docs: Swagger UI served by tunelab itself, under the
app's strict Content-Security-Policy (no CDN, no inline script)."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.conftest import screenshot


def test_the_api_reference_lists_the_operations(browser, server):
    context = browser.new_context(base_url=server, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    outside: list[str] = []
    page.on("request", lambda request: request.url.startswith(server) or outside.append(request.url))
    try:
        response = page.goto("/api/docs")
        assert "script-src 'self'" in response.headers["content-security-policy"]

        upload = page.locator(".opblock", has_text="/api/datasets").first
        expect(upload).to_be_visible()
        assert page.locator(".opblock").count() > 20, "every operation of the API is listed"
        expect(page.locator(".opblock-summary-path", has_text="/v1/fine_tuning/jobs").first).to_be_visible()

        page.locator(".opblock-summary-path", has_text="/api/jobs/{job_id}/cancel").first.click()
        expect(page.locator(".parameters-col_name", has_text="job_id").first).to_be_visible()
        screenshot(page, "api-docs")
    finally:
        context.close()
    assert problems == [], "no blocked asset and no script error"
    assert outside == [], "every asset comes from tunelab"
