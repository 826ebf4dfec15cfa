"""Settings: a new API token stays on screen while its owner does other things on the page,
until they say they have it."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def test_the_new_token_stays_shown_through_other_actions_until_done(pages, make_account):
    admin = make_account(team="acme", role="owner", admin=True)
    newcomer = make_account(team="globex", role="member")
    page = pages.sign_in(admin.email)
    page.goto("/settings")
    page.fill("#token-form input[name=name]", "laptop")
    page.click("#token-form button")
    token = page.locator("#new-token-value")
    expect(token).to_have_text(re.compile(r"^tl_"))
    secret = token.text_content()

    page.fill("#team-form input[name=name]", "research")
    page.click("#team-form button")
    expect(page.locator("#teams h2", has_text="Team research")).to_be_visible()
    acme = page.locator("#teams section", has_text="Team acme")
    acme.get_by_placeholder("Email of an existing user").fill(newcomer.email)
    acme.locator("button:has-text('Add member')").click()
    expect(acme.locator("td", has_text=newcomer.email)).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#tokens tr", has_text="tests").locator("button:has-text('Revoke')").click()
    expect(page.locator("#tokens tr", has_text="tests").locator("button")).to_have_text("Revoked")

    expect(page.locator("#new-token")).to_be_visible()
    expect(token).to_have_text(secret)
    page.click("#token-done")
    expect(page.locator("#new-token")).to_be_hidden()
    assert secret not in page.content()
