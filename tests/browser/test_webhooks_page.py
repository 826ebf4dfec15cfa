"""Settings: an owner adds a webhook (its secret shown once), sends a test event and watches the
delivery log show a failed try, then the retry that got through; members see no webhooks."""

from __future__ import annotations

import re

import pytest
import standardwebhooks
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import forget_cached_settings
from tests.webhooks.receiver import Receiver


@pytest.fixture
def webhook_env(redis_broker, workers, monkeypatch):
    """Before the server starts: webhooks may go to the receiver on 127.0.0.1, through this test's queue."""
    monkeypatch.setenv("TUNELAB_WEBHOOKS_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("TUNELAB_WEBHOOKS_QUEUE", workers.queue)
    monkeypatch.setenv("TUNELAB_WEBHOOKS_BACKOFF_S", "1")
    forget_cached_settings()


@pytest.fixture
def receiver():
    started = Receiver(statuses=[500, 200]).start()
    yield started
    started.stop()


def test_an_owner_adds_a_webhook_and_its_test_event_arrives_after_a_retry(
    webhook_env, pages, workers, make_account, receiver
):
    owner = make_account(team="acme", role="owner")
    member = make_account(team="acme", role="member")
    workers.start(max_tasks_per_child=None)
    page = pages.sign_in(owner.email)
    page.goto("/settings")
    form = page.locator("#webhook-form")
    form.locator("input[name=url]").fill(receiver.url)
    form.locator("input[name=description]").fill("CI: tag the model when a job succeeds")
    form.locator("label", has_text="running").locator("input").check()
    form.locator("button[type=submit]").click()
    secret = page.locator("#webhook-secret-value")
    expect(secret).to_have_text(re.compile(r"^whsec_"))
    row = page.locator("#webhook-rows tr", has_text=receiver.url)
    expect(row).to_contain_text("succeeded, failed, cancelled, running")
    expect(row).to_contain_text("enabled")

    row.locator("button", has_text="Send test event").click()
    log = page.locator("#delivery-rows tr").first
    expect(log).to_contain_text("webhook.test")
    expect(log).to_contain_text("delivered", timeout=30_000)  # the log refreshes itself while pending
    expect(log.locator("td").nth(3)).to_have_text("2")
    expect(log.locator("td.tries")).to_have_text(re.compile(r"^500 \(\d+ ms\) → 200 \(\d+ ms\)$"))
    expect(log).to_contain_text("the receiver answered HTTP 500")
    events = receiver.verified(secret.text_content())
    assert [e["type"] for e in events] == ["webhook.test", "webhook.test"]
    screenshot(page, "webhooks-settings")  # docs/webhooks-settings.png is a copy of it

    page.click("#webhook-secret-done")
    assert secret.text_content() == ""
    page.reload()
    assert "whsec_" not in page.content()
    row.locator("button", has_text="Disable").click()
    expect(row).to_contain_text("disabled")
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook("whsec_" + "A" * 44).verify(receiver.received[0].body, receiver.received[0].headers)

    other = pages.sign_in(member.email)
    other.goto("/settings")
    expect(other.locator("#teams h2", has_text="Team acme")).to_be_visible()
    expect(other.locator("#webhooks")).to_be_hidden()
