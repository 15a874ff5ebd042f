"""One error shape for every failure: OpenAI's ``{"error": {"message", "type", "param", "code"}}``.

A user's mistake is a 400 (bad input), 401 (no key), 403 (not allowed), 404 (unknown id), 413 or 429, never a 409
or 5xx, which the official client would retry. A request model's validation error (:mod:`helpers.server.protocol`)
becomes a 400 naming the parameter, in the same shape.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("workbook.server")


class ApiError(Exception):
    """An error the client should see, in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind, self.headers = status, message, param, code, kind, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No {what} with id '{ident}' found.", param=param, code=f"{what.replace(' ', '_')}_not_found")


def too_large(message: str) -> ApiError:
    return ApiError(413, message, param="file", code="file_too_large")


def problem(message: str, param: str | None = None, code: str | None = None) -> PydanticCustomError:
    """A request model's complaint: ``message`` as the 400 shows it; ``param`` when it is not the field's own path."""
    ctx = {key: value for key, value in (("param", param), ("code", code)) if value is not None}
    return PydanticCustomError("bad_request", message, ctx)


def param_name(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as OpenAI names the parameter: ``("messages", 0, "content")`` ->
    ``messages[0].content``; a hyperparameter by its own name (``n_epochs``), wherever the body put it."""
    if "hyperparameters" in loc and isinstance(loc[-1], str) and loc[-1] != "hyperparameters":
        return loc[-1]
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def from_validation(errors: list[Any]) -> ApiError:
    """The first problem a request model found, as a 400. Our validators say what a value must be (``ctx.code``
    carries a specific error code); pydantic's own checks (a missing field, an unknown one) are worded here."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    loc = loc[1:] if loc and loc[0] in ("body", "query", "path") else loc
    param = param_name(loc)
    ctx = first.get("ctx") or {}
    kind = first.get("type")
    if kind == "missing":
        return bad_request(f"'{param}' is required.", param)
    if kind == "extra_forbidden":
        return bad_request(f"Unknown field(s) ['{loc[-1]}'].", param)
    if kind == "bad_request":
        return bad_request(str(first.get("msg")), ctx.get("param", param), code=ctx.get("code"))
    return bad_request(f"Invalid request: {first.get('msg')} ({param or 'body'}).", param)


def install(app: FastAPI) -> None:
    """Every error the app can raise answers in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return ApiError(404, f"Unknown path {request.method} {request.url.path}. The local backend serves /v1/files, "
                                 "/v1/fine_tuning/jobs, /v1/models and /v1/chat/completions.", code="unknown_url").response()
        if exc.status_code == 405:
            return ApiError(405, f"{request.method} is not allowed on {request.url.path}.", code="method_not_allowed").response()
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return ApiError(500, f"The local server hit an internal error: {type(exc).__name__}. See the server log.",
                        kind="server_error").response()
