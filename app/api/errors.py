"""How errors become responses, in one place: the domain's errors (`app.core.errors`) and
HTTP errors answer JSON to the API and to anything asking for JSON, an error page to a
browser, and a sign-in redirect to a browser that is not signed in. Under /v1 the routes
answer in OpenAI's shape instead (`app.api.openai_compat.errors`)."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.deps import NotSignedIn
from app.core.errors import DomainError, InvalidField
from app.pages.templating import templates

_TITLES = {404: "Not found", 403: "Not allowed", 401: "Please sign in"}


def as_http_error(error: DomainError) -> StarletteHTTPException:
    return StarletteHTTPException(error.status, error.message, headers=error.headers or None)


async def _http_error(request: Request, error: StarletteHTTPException):
    """Pages get a page; the API (and anything asking for JSON) gets JSON."""
    wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(("/api/", "/v1/"))
    if not wants_html:
        return await http_exception_handler(request, error)
    context = {
        "status_code": error.status_code,
        "title": _TITLES.get(error.status_code, "Something went wrong"),
        "message": error.detail if isinstance(error.detail, str) else "",
        "user": None,
    }
    headers = getattr(error, "headers", None)
    return templates.TemplateResponse(request, "error.html", context, status_code=error.status_code, headers=headers)


async def _domain_error(request: Request, error: DomainError):
    return await _http_error(request, as_http_error(error))


async def _invalid_field(request: Request, error: InvalidField):
    """A 422 in FastAPI's own shape, so a form can show the message beside its field."""
    return await _invalid_request(request, RequestValidationError(error.errors()))


UNSTORABLE = "the request holds a value the database cannot store: a NUL character in a text, or a number out of range"


async def _unstorable(request: Request, _error: DataError):
    """Parameters are always bound, never spliced into SQL: a DataError comes from a value
    the client sent (a NUL character, an id beyond 64 bits), so it is the client's 422."""
    return await _http_error(request, StarletteHTTPException(422, UNSTORABLE))


def json_safe(value: Any) -> Any:
    """A validation error's echo of the input, with what JSON cannot carry (NaN, infinity,
    bytes) spelled out as text, so that the 422 itself can be sent."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


async def _invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": json_safe(jsonable_encoder(error.errors()))}, status_code=422)


async def _not_signed_in(request: Request, _error: NotSignedIn) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(InvalidField, _invalid_field)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(NotSignedIn, _not_signed_in)
