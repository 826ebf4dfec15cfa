"""Brute-force protection for signing in: failed attempts are counted per account and per
client address over a sliding window; past the limit, every attempt (the right password
included) is refused with a 429 until the oldest failure in the window has aged out.

Counted in the app process (the compose stack runs one); each app made by `create_app` has
its own `LoginThrottle`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from threading import Lock

from app.core.errors import TooManyRequests

MAX_TRACKED_KEYS = 100_000  # oldest keys are forgotten first: memory stays bounded under a flood


class LoginThrottle:
    def __init__(
        self,
        *,
        per_account: int,
        per_address: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"account": per_account, "address": per_address}
        self.window_s = window_s
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._lock = Lock()  # sign-ins run in the threadpool

    def _keys(self, email: str, address: str | None) -> list[tuple[str, str]]:
        keys = [("account", email.strip().lower())]
        if address:
            keys.append(("address", address))
        return keys

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def check(self, email: str, address: str | None) -> None:
        """TooManyRequests when the account or the address has failed too often lately."""
        now = self.clock()
        with self._lock:
            for key in self._keys(email, address):
                failures = self._recent(key, now)
                if len(failures) >= self.limits[key[0]]:
                    wait = math.ceil(failures[0] + self.window_s - now)
                    what = "this account" if key[0] == "account" else "your address"
                    raise TooManyRequests(
                        f"too many failed sign-ins for {what}; try again in {wait} s", retry_after_s=max(1, wait)
                    )

    def failed(self, email: str, address: str | None) -> None:
        now = self.clock()
        with self._lock:
            for key in self._keys(email, address):
                self._failures.setdefault(key, deque()).append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > MAX_TRACKED_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, email: str) -> None:
        """The account's failures are forgotten; its address's still count."""
        with self._lock:
            self._failures.pop(self._keys(email, None)[0], None)
