"""Errors in OpenAI's shape, which the `openai` package reads::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "training_file", "code": null}}

Every /v1 route uses `OpenAIRoute`: it answers the domain's errors (`app.core.errors`, team
scoping included), HTTP errors (authentication) and validation errors in that shape too. The request's database
session still commits after such an answer, so handlers raise before they write, as the
shared code they call does. Every error says `x-should-retry: false`: the openai package
would otherwise retry some of them (409, 5xx) on its own, several times over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.errors import UNSTORABLE
from app.core.errors import DomainError, InvalidField


class OpenAIError(HTTPException):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, headers=dict(headers) if headers else None)
        self.param = param
        self.code = code


def not_found(what: str, object_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such {what}: {object_id!r}", code="not_found")


def _error_type(status_code: int) -> str:
    if status_code == 401:
        return "authentication_error"
    if status_code == 403:
        return "permission_error"
    return "server_error" if status_code >= 500 else "invalid_request_error"


def error_body(status_code: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _error_type(status_code), "param": param, "code": code}}


def _response(status_code: int, message: str, *, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(
        error_body(status_code, message, param=param, code=code),
        status_code=status_code,
        headers={**(headers or {}), "x-should-retry": "false"},
    )


def param_name(loc: Sequence[Any], renames: Mapping[str, str] | None = None) -> str:
    """A validation error's location as OpenAI names a parameter: dotted, without "body";
    `renames` maps tunelab's field names (the first part) to the API's."""
    parts = [str(part) for part in loc if part != "body"]
    if parts and renames and parts[0] in renames:
        parts = [renames[parts[0]], *parts[1:]]
    return ".".join(parts)


def invalid(errors: Iterable[Mapping[str, Any]], renames: Mapping[str, str] | None = None) -> OpenAIError:
    """A 400 for pydantic-style errors ({"loc", "msg"}): every message, the first one's parameter."""
    errors = list(errors)
    params = [param_name(error["loc"], renames) for error in errors]
    message = "; ".join(f"{param}: {error['msg']}" if param else error["msg"] for param, error in zip(params, errors))
    return OpenAIError(400, message or "invalid request", param=params[0] if params else None)


class OpenAIRoute(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()

        async def answer_errors_the_openai_way(request):
            try:
                return await handler(request)
            except OpenAIError as error:
                return _response(
                    error.status_code, str(error.detail), param=error.param, code=error.code, headers=error.headers
                )
            except DataError:
                return _response(400, UNSTORABLE)
            except (RequestValidationError, InvalidField) as error:
                failure = invalid(error.errors())
                return _response(400, str(failure.detail), param=failure.param)
            except DomainError as error:
                return _response(error.status, error.message, code=error.code, headers=error.headers)
            except StarletteHTTPException as error:
                code = "invalid_api_key" if error.status_code == 401 else None
                return _response(error.status_code, str(error.detail), code=code, headers=error.headers)

        return answer_errors_the_openai_way
