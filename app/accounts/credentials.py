"""Passwords, API tokens and CSRF tokens.

Passwords are hashed with Argon2id (argon2-cffi's defaults, rehashed when they change).
API tokens are random 256-bit strings shown once; only their SHA-256 is stored, which is
enough for a secret with that much entropy and lets a lookup be one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
from functools import lru_cache
from threading import BoundedSemaphore, Lock

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.config import get_settings

TOKEN_PREFIX = "tl_"
_hasher = PasswordHasher()


class HashingSlots:
    """At most `size` Argon2 computations at once (each holds 64 MiB while it runs); the
    others wait their turn, so a flood of sign-ins costs time, not memory."""

    def __init__(self, size: int) -> None:
        self._semaphore = BoundedSemaphore(size)
        self._lock = Lock()
        self.in_use = 0
        self.peak = 0

    def __enter__(self) -> None:
        self._semaphore.acquire()
        with self._lock:
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)

    def __exit__(self, *_exc) -> None:
        with self._lock:
            self.in_use -= 1
        self._semaphore.release()


@lru_cache
def hashing_slots() -> HashingSlots:
    return HashingSlots(get_settings().max_concurrent_password_hashes)


@lru_cache
def _dummy_hash() -> str:
    """A real hash to verify against when the user does not exist, so that a login for an
    unknown email takes as long as one with a wrong password. Made on first use: hashing
    costs a noticeable fraction of a second, which start-up should not pay."""
    return _hasher.hash(secrets.token_urlsafe(16))


MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    with hashing_slots():
        return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        with hashing_slots():
            return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def check_password_strength(password: str) -> str | None:
    """A message saying what is wrong with a new password, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "password must be at most 1024 characters"
    return None


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_display_prefix(token: str) -> str:
    """The first characters of a token, kept so a user can tell tokens apart in a list."""
    return token[: len(TOKEN_PREFIX) + 6]


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and secrets.compare_digest(expected, given)
