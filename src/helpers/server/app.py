"""The HTTP API: OpenAI's files, fine-tuning, models and chat-completions endpoints under ``/v1``.

Responses follow OpenAI's OpenAPI description (``tests/contracts/``): the same paths, fields, list envelopes and
error bodies (:mod:`helpers.server.errors`). One router per resource (:mod:`helpers.server.routes`); request bodies
are pydantic models (:mod:`helpers.server.protocol`); each route gets the server's parts and the caller's workspace
as dependencies (:mod:`helpers.server.state`). Every request passes :func:`check_request` first: the host it is
addressed to, the origin of a browser page, and the key.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response

from helpers.server import errors, localmodels
from helpers.server.bases import Bases
from helpers.server.errors import ApiError
from helpers.server.inference import Engine, LocalEngine
from helpers.server.jobs import JobRunner
from helpers.server.routes import admin, chat, files, graders, jobs
from helpers.server.routes import models as model_routes
from helpers.server.shared import MAX_RESIDENT_MODELS, SharedModels
from helpers.server.state import LOOPBACK_NAMES, Limits, ServerState
from helpers.server.store import Store, owner_of

log = logging.getLogger("workbook.server")


def host_name(host: str) -> str:
    """The name part of a ``Host`` header or of an origin's authority: ``[::1]:8321`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def stop_when_idle(timeout_s: float, state: ServerState) -> None:
    """Send this process SIGTERM (uvicorn then shuts down cleanly) once ``timeout_s`` have passed since the last
    request with no job running or waiting."""
    while True:
        time.sleep(max(0.5, min(30.0, timeout_s / 4)))
        if time.monotonic() - state.last_request >= timeout_s and state.runner.current is None and not state.runner.waiting():
            log.warning("no request for %.0f s and no job to run: stopping (idle timeout)", timeout_s)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def refusal(request: Request, api_keys: dict[str, str] | set[str] | None, allowed_hosts: frozenset[str] | None) -> ApiError | None:
    """Why ``request`` is refused (a host it may not be addressed to, a page of another origin, no key or a wrong
    one), or None; an accepted ``/v1`` request gets its workspace in ``request.state.owner``."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if allowed_hosts is not None and host_name(host) not in allowed_hosts:
        return ApiError(403, f"This server does not answer requests addressed to {host_name(host) or 'no host'!r}: it "
                             f"answers to {', '.join(sorted(allowed_hosts))} (a page that rebinds its own name to this "
                             "machine cannot reach it). A workshop server names its host with --allowed-hosts.",
                        kind="permission_error", code="host_not_allowed")
    if origin is not None and origin.split("://", 1)[-1].rstrip("/").lower() != host.lower():
        return ApiError(403, f"Requests from web pages of another origin ({origin[:100]}) are refused: call the "
                             "server from Python (the openai client), not from a browser page.",
                        kind="permission_error", code="cross_origin_refused")
    if not request.url.path.startswith("/v1/"):
        return None
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not key:
        return ApiError(401, "You didn't provide an API key. Pass it as 'Authorization: Bearer KEY' (any "
                             "non-empty key works on the local backend; each key is its own workspace).", code="missing_api_key")
    if api_keys is not None and key not in api_keys:
        return ApiError(401, "Incorrect API key provided. Ask the workshop facilitator for your key.", code="invalid_api_key")
    request.state.owner = owner_of(key)
    return None


def create_app(data_dir: Path, *, api_keys: dict[str, str] | set[str] | None = None, limits: Limits | None = None,
               start_worker: bool = True, idle_timeout_s: float | None = None,
               allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES, models: SharedModels | None = None,
               engine: Engine | None = None, runner: JobRunner | None = None, bases: Bases | None = None,
               max_resident_models: int = MAX_RESIDENT_MODELS) -> FastAPI:
    """The server app, storing everything under ``data_dir``. ``api_keys``: accept only these keys (a dict maps
    each key to a label the facilitator sees in ``/queue``). ``limits``: per-key limits (default: one file up
    to 512 MiB, nothing else limited). ``idle_timeout_s``: stop the process after this long with no request and
    no running or waiting job (None: run until stopped). ``allowed_hosts``: the host names requests may be
    addressed to (default: loopback names only, which defeats DNS rebinding; None: any). Requests a browser makes
    from another origin are refused either way. ``bases``: the models the server knows besides the shipped one
    (``bases.brought_bases``, checked before the server starts); ``max_resident_models``: base models kept loaded at
    once. ``engine``: what answers chat requests (default:
    the in-process engine; ``helpers.server.vllm_engine.VllmEngine`` for vLLM). ``models``, ``engine``, ``runner``: parts
    to use instead of the real ones (the fast tests pass fakes that need no model)."""
    bases = bases or Bases()
    store = Store(data_dir)
    if models is None:
        localmodels.tame_allocator()  # before any worker thread exists
        localmodels.import_libraries()
        models = SharedModels(max_resident_models)  # one copy of each base model, for the trainer and the engine
    state = ServerState(store=store, models=models, engine=engine or LocalEngine(models),
                        runner=runner or JobRunner(store, models, bases), limits=limits or Limits(), bases=bases,
                        labels={owner_of(k): label for k, label in api_keys.items()} if isinstance(api_keys, dict) else {})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_worker:
            state.runner.start()
        if idle_timeout_s is not None:
            threading.Thread(target=stop_when_idle, args=(idle_timeout_s, state), name="idle", daemon=True).start()
        try:
            yield
        finally:
            state.engine.close()

    app = FastAPI(title="Fine-Tuning Workbook local backend", version="1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.workbook = state
    errors.install(app)
    for resource in (admin, files, jobs, graders, model_routes, chat):
        app.include_router(resource.router)

    @app.middleware("http")
    async def check_request(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = state.last_request = time.monotonic()
        refused = refusal(request, api_keys, allowed_hosts)
        response = refused.response() if refused else await call_next(request)
        state.last_request = time.monotonic()
        log.info('%s %s %s %.0fms', request.method, request.url.path, response.status_code, (state.last_request - started) * 1000)
        return response

    return app
