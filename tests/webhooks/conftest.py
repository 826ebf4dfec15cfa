"""Fixtures of the webhook tests: a receiver on 127.0.0.1, the setting that lets webhooks go there."""

from __future__ import annotations

import pytest

from tests.helpers import forget_cached_settings
from tests.webhooks.receiver import Receiver


@pytest.fixture
def receiver():
    """A receiver answering 200; set `.statuses` or `.hang_s` to change that."""
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def allow_private(settings_env, monkeypatch):
    """Webhooks may go to 127.0.0.1, where the test's receiver listens."""
    monkeypatch.setenv("TUNELAB_WEBHOOKS_ALLOW_PRIVATE", "true")
    forget_cached_settings()


@pytest.fixture
def owner(make_account):
    return make_account(team="acme", role="owner")
