"""What every route needs, as FastAPI dependencies: the server's state, the caller's workspace (the owner of the
key), a request body parsed by its model, and the caller's own records."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from helpers.data.chat_format import text_problem
from helpers.server.bases import Bases
from helpers.server.errors import bad_request, from_validation, not_found
from helpers.server.inference import Engine
from helpers.server.jobs import JobRunner
from helpers.server.shared import SharedModels
from helpers.server.store import Store

MIB = 1024 * 1024
MAX_UPLOAD_BYTES = 512 * MIB
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Limits:
    """Per-key limits for a shared (workshop) server. ``None``: no limit."""

    max_upload_bytes: int = MAX_UPLOAD_BYTES  # one file
    max_storage_bytes: int | None = None  # all of a key's uploaded files together
    max_active_jobs: int | None = None  # a key's jobs that have not finished (validating, queued or running)
    retry_after_s: int = 15  # what a 429 suggests before any job has an estimated finish (its first step gives one)
    training_closed: bool = False  # refuse new jobs as OpenAI refuses a blocked account (403 training_not_available)


@dataclass
class ServerState:
    """One server's parts: the store, the base models it knows and those loaded (shared), the inference engine, the job
    runner, the limits."""

    store: Store
    models: SharedModels
    engine: Engine
    runner: JobRunner
    limits: Limits
    bases: Bases = field(default_factory=Bases)
    #: owner (hashed key) -> the name the facilitator gave the key, for ``/queue``
    labels: dict[str, str] = field(default_factory=dict)
    #: when the last request was answered (``time.monotonic()``), for the idle timeout
    last_request: float = field(default_factory=time.monotonic)


def server_state(request: Request) -> ServerState:
    return request.app.state.workbook


def key_owner(request: Request) -> str:
    """The caller's workspace: the hashed key that the key check (``app.check_request``) accepted."""
    return request.state.owner


State = Annotated[ServerState, Depends(server_state)]
Owner = Annotated[str, Depends(key_owner)]


def refuse_what_is_not_text(value: Any) -> None:
    """The one rule for text (``chat_format.text_problem``): a 400 naming where the request breaks it."""
    problem = text_problem(value)
    if problem is not None:
        where, what, code = problem
        raise bad_request(f"{where} holds {what}. Send " + ("text only." if code == "invalid_text" else "less deeply nested JSON."),
                          where, code=code)


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object of text (a 400 for anything else)."""
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep to parse
        raise bad_request(f"The request body is not valid JSON: {str(exc)[:200] or type(exc).__name__}.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    refuse_what_is_not_text(body)
    return body


def parsed(body: dict[str, Any], model: type[M]) -> M:
    """``body`` as the request model ``model``; its first problem as a 400 in OpenAI's shape."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation(list(exc.errors())) from None


def owned(state: ServerState, owner: str, kind: str, ident: str, what: str, param: str) -> dict[str, Any]:
    """The caller's record, or a 404 (also for another key's record: its existence is not revealed)."""
    body = state.store.get(kind, ident, owner)
    if body is None:
        raise not_found(what, ident, param)
    return body
