"""Errors the domain raises, each with the HTTP status the API answers it with.

Domain modules know nothing of HTTP: they raise these, and `app.api.errors` turns them into
responses in one place (JSON for the API, a page for a browser, OpenAI's shape under /v1).
"""

from __future__ import annotations


class DomainError(Exception):
    """A request that cannot be done; `message` is fit to show the user as it is."""

    status = 400

    def __init__(self, message: str, status: int | None = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # a machine-readable reason, where clients tell cases apart (OpenAI's `code`)
        if status is not None:
            self.status = status

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries (Retry-After, say)."""
        return {}


class NotFound(DomainError):
    """Missing, or another team's: the caller cannot tell the two apart."""

    status = 404


class Forbidden(DomainError):
    status = 403


class Conflict(DomainError):
    """The object is not in a state that allows this (a finished job cancelled, a dataset in use)."""

    status = 409


class Gone(DomainError):
    """The row is there but its file is no longer in the blob store."""

    status = 410


class Unavailable(DomainError):
    """A service the request needs (the broker, an inference worker) cannot be reached."""

    status = 503


class TooManyRequests(DomainError):
    """Try again later: `retry_after_s` says when."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class AccountError(DomainError):
    """A request about users, teams or tokens that cannot be done."""


class InvalidField(DomainError):
    """A value pydantic cannot check alone (a dataset of another team, a model that is not
    there); answered beside the field at fault, in the shape of a validation error."""

    status = 422

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc

    def errors(self) -> list[dict]:
        """As pydantic (and FastAPI's 422 body) list their errors."""
        return [{"loc": ("body", *self.loc), "msg": self.message, "type": "value_error"}]
