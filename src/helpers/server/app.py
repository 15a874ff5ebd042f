"""The HTTP API: OpenAI's files, fine-tuning, models and chat-completions endpoints under ``/v1``.

Responses follow OpenAI's OpenAPI description (``tests/contracts/``): the same paths, fields, list
envelopes and error bodies ``{"error": {"message", "type", "param", "code"}}``. A user's mistake is a 400
(bad input), 401 (no key), 403 (not allowed) or 404 (unknown id), never a 409 or 5xx, which the official
client would retry.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from helpers.data.chat_format import text_problem
from helpers.pricing import catalogue
from helpers.server import localmodels, structured
from helpers.server.inference import Engine, Sampling, Target
from helpers.server.jobs import ORGANIZATION, JobRunner, JobStatus
from helpers.server.shared import SharedModels
from helpers.server.store import Store, new_id, now, owner_of
from helpers.server.training import with_tools


class ClosingStreamingResponse(StreamingResponse):
    """A stream whose generator is closed as soon as the response ends, sent or not (the client may be gone), so
    its ``finally`` stops the generation at once instead of whenever the garbage collector finds it."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()

log = logging.getLogger("workbook.server")

MIB = 1024 * 1024
MAX_UPLOAD_BYTES = 512 * MIB
FILE_PURPOSES = {"fine-tune"}
SUFFIX_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SERVER_STARTED = now()


@dataclass(frozen=True)
class Limits:
    """Per-key limits for a shared (workshop) server. ``None``: no limit."""

    max_upload_bytes: int = MAX_UPLOAD_BYTES  # one file
    max_storage_bytes: int | None = None  # all of a key's uploaded files together
    max_active_jobs: int | None = None  # a key's jobs that have not finished (validating, queued or running)
    retry_after_s: int = 60  # what a 429 suggests when no job has an estimated finish yet
    training_closed: bool = False  # refuse new jobs as OpenAI refuses a blocked account (403 training_not_available)


class ApiError(Exception):
    """An error the client should see, in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind, self.headers = status, message, param, code, kind, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def too_large(message: str) -> ApiError:
    return ApiError(413, message, param="file", code="file_too_large")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No {what} with id '{ident}' found.", param=param, code=f"{what.replace(' ', '_')}_not_found")


def public(body: dict[str, Any]) -> dict[str, Any]:
    """A record as the API shows it: internal fields (leading underscore) removed."""
    return {k: v for k, v in body.items() if not k.startswith("_")}


def page(items: list[dict[str, Any]], has_more: bool, *, first_last: bool = False, empty_id: str | None = "") -> dict[str, Any]:
    """A list envelope. ``first_last`` adds first_id/last_id; for an empty page they are ``empty_id``
    (the spec types them as strings for files and chat completions, string-or-null for checkpoints)."""
    body: dict[str, Any] = {"object": "list", "data": [public(i) for i in items], "has_more": has_more}
    if first_last:
        body["first_id"] = items[0]["id"] if items else empty_id
        body["last_id"] = items[-1]["id"] if items else empty_id
    return body


def limit_param(value: str | None, default: int = 20, maximum: int = 100) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise bad_request(f"'limit' must be a whole number, got {value!r}.", "limit") from None
    if not 1 <= limit <= maximum:
        raise bad_request(f"'limit' must be between 1 and {maximum}, got {limit}.", "limit")
    return limit


def metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` query parameters."""
    out = {}
    for key, value in request.query_params.multi_items():
        match = re.fullmatch(r"metadata\[(.+)\]", key)
        if match:
            out[match.group(1)] = value
    return out


def metadata_matches(body: dict[str, Any], wanted: dict[str, str]) -> bool:
    return all((body.get("metadata") or {}).get(k) == v for k, v in wanted.items())


def check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad_request("'metadata' must be an object of string keys and string values.", "metadata")
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise bad_request("'metadata' allows at most 16 pairs, keys up to 64 characters and values up to 512.", "metadata")
    return metadata


def first_line_problem(data: bytes) -> str | None:
    """Why ``data`` is plainly not JSON Lines (its first non-blank line is not UTF-8 text or not a JSON object), or
    None. Only a sniff, so that a wrong file (a CSV, a PDF, a spreadsheet) is refused at once; the job's validator
    checks every line."""
    start, number = 0, 1
    while True:
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        raw = data[start:end]
        if raw.strip():
            break
        if end >= len(data):
            return None
        start, number = end + 1, number + 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"line {number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line)"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return f"line {number} is not JSON ({text[:40].strip()!r}...)"
    problem = text_problem(value)
    if problem is not None:
        return f"line {number}, {problem[0]}: {problem[1]}"
    return None if isinstance(value, dict) else f"line {number} is a JSON {type(value).__name__}, not an object"


def stop_when_idle(timeout_s: float, last_request: list[float], runner: JobRunner) -> None:
    """Send this process SIGTERM (uvicorn then shuts down cleanly) once ``timeout_s`` have passed since the last
    request with no job running or waiting."""
    while True:
        time.sleep(max(0.5, min(30.0, timeout_s / 4)))
        if time.monotonic() - last_request[0] >= timeout_s and runner.current is None and not runner.waiting():
            log.warning("no request for %.0f s and no job to run: stopping (idle timeout)", timeout_s)
            os.kill(os.getpid(), signal.SIGTERM)
            return


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def host_name(host: str) -> str:
    """The name part of a ``Host`` header or of an origin's authority: ``[::1]:8321`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def create_app(data_dir: Path, *, api_keys: dict[str, str] | set[str] | None = None, limits: Limits | None = None,
               start_worker: bool = True, idle_timeout_s: float | None = None,
               allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES) -> FastAPI:
    """The server app, storing everything under ``data_dir``. ``api_keys``: accept only these keys (a dict maps
    each key to a label the facilitator sees in ``/queue``). ``limits``: per-key limits (default: one file up
    to 512 MiB, nothing else limited). ``idle_timeout_s``: stop the process after this long with no request and
    no running or waiting job (None: run until stopped). ``allowed_hosts``: the host names requests may be
    addressed to (default: loopback names only, which defeats DNS rebinding; None: any). Requests a browser makes
    from another origin are refused either way."""
    limits = limits or Limits()
    labels = {owner_of(k): label for k, label in api_keys.items()} if isinstance(api_keys, dict) else {}
    localmodels.import_libraries()  # before any worker thread exists
    store = Store(data_dir)
    models = SharedModels()  # one copy of each base model, for the trainer and the engine
    engine = Engine(models)
    runner = JobRunner(store, models)
    app = FastAPI(title="Fine-Tuning Workbook local backend", version="1.0", docs_url=None, redoc_url=None)
    app.state.store, app.state.engine, app.state.runner = store, engine, runner

    last_request = [time.monotonic()]

    @app.on_event("startup")
    def _start() -> None:
        if start_worker:
            runner.start()
        if idle_timeout_s is not None:
            threading.Thread(target=stop_when_idle, args=(idle_timeout_s, last_request, runner), name="idle", daemon=True).start()

    # -- errors and auth -----------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return bad_request(f"Invalid request: {first.get('msg')} ({where or 'body'}).", where).response()

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

    @app.middleware("http")
    async def _log_and_auth(request: Request, call_next):
        started = last_request[0] = time.monotonic()
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if allowed_hosts is not None and host_name(host) not in allowed_hosts:
            response = ApiError(403, f"This server does not answer requests addressed to {host_name(host) or 'no host'!r}: it "
                                     f"answers to {', '.join(sorted(allowed_hosts))} (a page that rebinds its own name to this "
                                     "machine cannot reach it). A workshop server names its host with --allowed-hosts.",
                                kind="permission_error", code="host_not_allowed").response()
        elif origin is not None and origin.split("://", 1)[-1].rstrip("/").lower() != host.lower():
            response = ApiError(403, f"Requests from web pages of another origin ({origin[:100]}) are refused: call the "
                                     "server from Python (the openai client), not from a browser page.",
                                kind="permission_error", code="cross_origin_refused").response()
        elif request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            key = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if not key:
                response = ApiError(401, "You didn't provide an API key. Pass it as 'Authorization: Bearer KEY' (any "
                                         "non-empty key works on the local backend; each key is its own workspace).",
                                    code="missing_api_key").response()
            elif api_keys is not None and key not in api_keys:
                response = ApiError(401, "Incorrect API key provided. Ask the workshop facilitator for your key.",
                                    code="invalid_api_key").response()
            else:
                request.state.owner = owner_of(key)
                response = await call_next(request)
        else:
            response = await call_next(request)
        last_request[0] = time.monotonic()
        log.info('%s %s %s %.0fms', request.method, request.url.path, response.status_code, (last_request[0] - started) * 1000)
        return response

    async def json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep to parse
            raise bad_request(f"The request body is not valid JSON: {str(exc)[:200] or type(exc).__name__}.") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        refuse_what_is_not_text(body)
        return body

    def refuse_what_is_not_text(value: Any) -> None:
        """The one rule for text (``chat_format.text_problem``): a 400 naming where the request breaks it."""
        problem = text_problem(value)
        if problem is not None:
            where, what, code = problem
            raise bad_request(f"{where} holds {what}. Send " + ("text only." if code == "invalid_text" else "less deeply nested JSON."), where, code=code)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "started_at": SERVER_STARTED, "data_dir": str(store.data_dir), "pid": os.getpid(),
                "training_closed": limits.training_closed,
                "inference": dict(engine.stats), "models": [m.describe() for m in models.loaded()]}

    @app.get("/queue")
    def queue(request: Request) -> dict[str, Any]:
        """The fine-tuning queue, for the facilitator (``workbook queue``): answered on loopback only."""
        if request.client is None or request.client.host not in ("127.0.0.1", "::1", "localhost"):
            raise ApiError(403, "The queue is shown only on the server's own machine (run `workbook queue` there).",
                           kind="permission_error", code="loopback_only")

        def row(job_id: str, position: int | None) -> dict[str, Any]:
            job, owner = store.get("job", job_id, None), store.owner("job", job_id)
            return {"position": position, "id": job_id, "key": labels.get(owner, owner[:8]), "status": job["status"],
                    "model": job["model"], "created_at": job["created_at"], "estimated_finish": job.get("estimated_finish")}

        current = runner.current
        return {"running": row(current, 0) if current else None,
                "waiting": [row(j, i) for i, j in enumerate(runner.waiting(), 1)], "limits": vars(limits)}

    # -- files ----------------------------------------------------------------------------------
    @app.post("/v1/files")
    async def create_file(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise bad_request("Upload files as multipart/form-data with fields 'file' and 'purpose'.")
        limit = limits.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            raise ApiError(411, "Send uploads with a Content-Length header (the openai client does).", code="length_required")
        if int(declared) > limit + 64 * 1024:  # refused before the body is read: nothing of it is stored
            raise too_large(f"The upload is {int(declared):,} bytes; this server accepts files up to {limit:,} bytes.")
        form = await request.form()
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose is None:
            raise bad_request("Missing 'purpose'. Use purpose='fine-tune'.", "purpose")
        if purpose not in FILE_PURPOSES:
            raise bad_request(f"'{purpose}' is not a purpose the local backend accepts. Use purpose='fine-tune'.", "purpose")
        if upload is None or isinstance(upload, str):
            raise bad_request("Missing 'file': send the file's content as a multipart file field.", "file")
        data = await upload.read()
        if len(data) > limit:
            raise too_large(f"The file is {len(data):,} bytes; this server accepts files up to {limit:,} bytes.")
        if not data.strip():
            raise bad_request("The file is empty.", "file")
        filename = Path((upload.filename or "upload.jsonl").replace("\\", "/")).name or "upload.jsonl"
        problem = first_line_problem(data)
        if problem:
            raise bad_request(f"'{filename}' is not a JSON Lines file: {problem}. Fine-tuning files are UTF-8 text with one "
                              "JSON object per line; check a file with `workbook validate FILE` before uploading.", "file",
                              code="invalid_file_format")
        if limits.max_storage_bytes is not None:
            used = sum(f["bytes"] for _, f in store.all("file", owner=request.state.owner))
            if used + len(data) > limits.max_storage_bytes:
                raise ApiError(413, f"Your files on this server would take {used + len(data):,} bytes; each key may keep up to "
                                    f"{limits.max_storage_bytes:,}. Delete files you no longer need (client.files.delete).",
                               param="file", code="storage_limit_reached")
        file_id = new_id("file")
        await run_in_threadpool(store.write_file, request.state.owner, file_id, data)  # fsync: off the event loop
        body = {"object": "file", "id": file_id, "purpose": purpose, "filename": filename, "bytes": len(data),
                "created_at": now(), "status": "processed"}
        return public(store.put("file", body, request.state.owner))

    @app.get("/v1/files")
    def list_files(request: Request, purpose: str | None = None, limit: str | None = None, order: str = "desc",
                   after: str | None = None) -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise bad_request("'order' must be 'asc' or 'desc'.", "order")
        items, more = store.page("file", request.state.owner, after=after, limit=limit_param(limit, 10_000, 10_000),
                                 newest_first=order == "desc", where=(lambda f: f["purpose"] == purpose) if purpose else None)
        return page(items, more, first_last=True)

    def owned(request: Request, kind: str, ident: str, what: str, param: str) -> dict[str, Any]:
        """The caller's record, or a 404 (also for another key's record: its existence is not revealed)."""
        body = store.get(kind, ident, request.state.owner)
        if body is None:
            raise not_found(what, ident, param)
        return body

    def owned_file(request: Request, file_id: str) -> dict[str, Any]:
        return owned(request, "file", file_id, "file", "file_id")

    @app.get("/v1/files/{file_id}")
    def retrieve_file(request: Request, file_id: str) -> dict[str, Any]:
        return public(owned_file(request, file_id))

    @app.get("/v1/files/{file_id}/content")
    def file_content(request: Request, file_id: str) -> Response:
        owned_file(request, file_id)
        return Response(store.file_path(request.state.owner, file_id).read_bytes(), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    def delete_file(request: Request, file_id: str) -> dict[str, Any]:
        owned_file(request, file_id)
        store.delete("file", file_id)
        store.file_path(request.state.owner, file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- fine-tuning jobs -----------------------------------------------------------------------
    def hyperparameter(value: Any, name: str, kind: type, low: float, high: float) -> Any:
        if value is None or value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
            raise bad_request(f"'{name}' must be \"auto\" or a {'whole number' if kind is int else 'number'}, got {value!r}.", name)
        if not low <= value <= high:
            raise bad_request(f"'{name}' must be between {low:g} and {high:g}, got {value}.", name)
        return kind(value)

    def parse_hyperparameters(raw: Any, method: str) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise bad_request("'hyperparameters' must be an object.", "hyperparameters")
        known = {"n_epochs", "batch_size", "learning_rate_multiplier"} | ({"beta"} if method == "dpo" else set())
        unknown = set(raw) - known
        if unknown:
            raise bad_request(f"Unknown hyperparameter(s) {sorted(unknown)} for a {method} job; known: {sorted(known)}.", "hyperparameters")
        out = {"n_epochs": hyperparameter(raw.get("n_epochs"), "n_epochs", int, 1, 50),
               "batch_size": hyperparameter(raw.get("batch_size"), "batch_size", int, 1, 256),
               "learning_rate_multiplier": hyperparameter(raw.get("learning_rate_multiplier"), "learning_rate_multiplier", float, 1e-4, 10)}
        if method == "dpo":
            out["beta"] = hyperparameter(raw.get("beta"), "beta", float, 1e-4, 2)
        return out

    def fine_tunable_file(request: Request, file_id: Any, param: str) -> str:
        if not isinstance(file_id, str) or not file_id:
            raise bad_request(f"'{param}' must be the id of an uploaded file (for example 'file-abc123').", param)
        body = store.get("file", file_id, request.state.owner)
        if body is None:
            raise bad_request(f"invalid {param}: no file with id '{file_id}' (upload it with client.files.create).", param,
                              code="invalid_file")
        if body["purpose"] != "fine-tune":
            raise bad_request(f"invalid {param}: file '{file_id}' has purpose '{body['purpose']}', not 'fine-tune'.", param)
        return file_id

    def check_job_limit(owner: str) -> None:
        """429 with Retry-After when the key already has ``max_active_jobs`` unfinished jobs."""
        if limits.max_active_jobs is None:
            return
        active = [j for _, j in store.all("job", owner=owner) if not JobStatus(j["status"]).finished]
        if len(active) < limits.max_active_jobs:
            return
        finishes = [j["estimated_finish"] for j in active if j.get("estimated_finish")]
        wait = max(1, min(finishes) - now()) if finishes else limits.retry_after_s
        raise ApiError(429, f"You already have {len(active)} unfinished fine-tuning job(s); this server runs at most "
                            f"{limits.max_active_jobs} per key at a time so that everyone's jobs get their turn. Wait for one "
                            f"to finish (about {wait} s) or cancel one with client.fine_tuning.jobs.cancel(JOB_ID).",
                       code="too_many_active_jobs", kind="rate_limit_error", headers={"Retry-After": str(wait)})

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("'model' is required: the base model to fine-tune, for example 'gpt-4.1-mini'.", "model")
        owner = request.state.owner
        start = None  # a fine-tuned model (or checkpoint) the job continues from: its adapter is the starting weights
        if model.startswith("ft:"):
            start = store.get("model", model, owner) or checkpoint_model(owner, model)
            if start is None:
                raise bad_request(f"'{model}' is not one of your fine-tuned models or checkpoints, so a job cannot start from it. "
                                  "Check the name with client.models.list(), or start from a base model such as 'gpt-4.1-mini'.",
                                  "model", code="model_not_available")
        base = catalogue.base_models()[start["_base"]] if start else catalogue.resolve_base(model)
        if base is None:
            names = ", ".join(sorted({*catalogue.aliases(), *catalogue.base_models()}))
            raise bad_request(f"Model '{model}' is not available for fine-tuning on the local backend. Available: {names}.", "model",
                              code="model_not_available")
        training_file = fine_tunable_file(request, body.get("training_file"), "training_file")
        validation_file = fine_tunable_file(request, body["validation_file"], "validation_file") if body.get("validation_file") else None
        method = body.get("method") or {"type": "supervised"}
        if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo"):
            raise bad_request("'method.type' must be 'supervised' or 'dpo' on the local backend.", "method")
        kind = method["type"]
        method_hyper = (method.get(kind) or {}).get("hyperparameters") if isinstance(method.get(kind), dict) else None
        if body.get("hyperparameters") and method_hyper:
            raise bad_request("Give hyperparameters either at the top level or under 'method', not both.", "hyperparameters")
        hyper = parse_hyperparameters(method_hyper if method_hyper is not None else body.get("hyperparameters"), kind)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not SUFFIX_PATTERN.match(suffix)):
            raise bad_request("'suffix' must be 1-64 characters of letters, digits, '-' or '_'.", "suffix")
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbelow(2_147_483_647)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2_147_483_647:
            raise bad_request("'seed' must be a whole number between 0 and 2147483647.", "seed")
        unknown = set(body) - {"model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed", "metadata", "integrations"}
        if unknown:
            raise bad_request(f"Unknown field(s) {sorted(unknown)}.", sorted(unknown)[0])
        if body.get("integrations"):
            raise bad_request("Integrations (Weights & Biases) are not available on the local backend.", "integrations")
        if limits.training_closed:
            raise ApiError(403, "Fine-tuning is not available to this organization: self-serve fine-tuning is winding down and "
                                "no new jobs can be created; models already fine-tuned keep serving (this local server was "
                                "started with --training-closed to rehearse OpenAI's wind-down; chat completions still work)",
                           code="training_not_available")
        check_job_limit(owner)
        job = {
            "object": "fine_tuning.job", "id": new_id("ftjob"), "model": model, "created_at": now(),
            "finished_at": None, "fine_tuned_model": None, "organization_id": ORGANIZATION, "result_files": [],
            "status": "validating_files", "validation_file": validation_file, "training_file": training_file,
            "hyperparameters": {k: hyper[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
            "method": {"type": kind, kind: {"hyperparameters": hyper}}, "trained_tokens": None, "error": None,
            "seed": seed, "estimated_finish": None, "integrations": [], "metadata": check_metadata(body.get("metadata")),
            "user_provided_suffix": suffix, "_base": base.name, "_start_from": model if start else None,
        }
        store.put("job", job, owner)
        runner.event(job["id"], f"Created fine-tuning job: {job['id']}")
        runner.submit(job["id"])
        return public(job)

    def owned_job(request: Request, job_id: str) -> dict[str, Any]:
        return owned(request, "job", job_id, "fine-tuning job", "fine_tuning_job_id")

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(request: Request, after: str | None = None, limit: str | None = None) -> dict[str, Any]:
        wanted = metadata_filter(request)
        where = (lambda j: metadata_matches(j, wanted)) if wanted else None
        items, more = store.page("job", request.state.owner, after=after, limit=limit_param(limit), where=where)
        return page(items, more)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve_job(request: Request, job_id: str) -> dict[str, Any]:
        return public(owned_job(request, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        job = owned_job(request, job_id)
        if JobStatus(job["status"]).finished:
            raise bad_request(f"Job {job_id} has already {job['status']}; only a job that has not finished can be cancelled.",
                              "fine_tuning_job_id", code="job_not_cancellable")
        return public(runner.cancel(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def pause_resume(request: Request, job_id: str) -> dict[str, Any]:
        owned_job(request, job_id)
        raise bad_request("Pausing and resuming jobs is not available on the local backend; cancel the job and start "
                          "a new one from its last checkpoint model instead.", "fine_tuning_job_id", code="not_supported")

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def list_events(request: Request, job_id: str, after: str | None = None, limit: str | None = None) -> dict[str, Any]:
        owned_job(request, job_id)
        items, more = store.page("event", request.state.owner, parent=job_id, after=after, limit=limit_param(limit))
        return page(items, more)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(request: Request, job_id: str, after: str | None = None, limit: str | None = None) -> dict[str, Any]:
        owned_job(request, job_id)
        items, more = store.page("checkpoint", request.state.owner, parent=job_id, after=after, limit=limit_param(limit, 10))
        return page(items, more, first_last=True, empty_id=None)

    # -- models ---------------------------------------------------------------------------------
    def base_model_cards() -> list[dict[str, Any]]:
        names = sorted({*catalogue.base_models(), *catalogue.aliases()})
        return [{"id": name, "object": "model", "created": SERVER_STARTED, "owned_by": "system"} for name in names]

    def checkpoint_model(owner: str, name: str) -> dict[str, Any] | None:
        for _, ckpt in store.all("checkpoint", owner=owner):
            if ckpt["fine_tuned_model_checkpoint"] == name:
                job = store.get("job", ckpt["fine_tuning_job_id"], owner)
                return {"id": name, "object": "model", "created": ckpt["created_at"], "owned_by": ORGANIZATION,
                        "_base": catalogue.resolve_base(job["model"]).name}
        return None

    def find_model(request: Request, name: str) -> tuple[dict[str, Any], Target]:
        base = catalogue.resolve_base(name)
        if base is not None and not name.startswith("ft:"):
            return {"id": name, "object": "model", "created": SERVER_STARTED, "owned_by": "system"}, Target(base)
        owner = request.state.owner
        card = store.get("model", name, owner) or checkpoint_model(owner, name)
        if card is None:
            raise ApiError(404, f"The model '{name}' does not exist or you do not have access to it.", param="model",
                           code="model_not_found")
        target = Target(catalogue.base_models()[card["_base"]], store.model_dir(owner, name))
        return card, target

    @app.get("/v1/models")
    def list_models(request: Request) -> dict[str, Any]:
        tuned = [public(m) for _, m in store.all("model", owner=request.state.owner)]
        return {"object": "list", "data": base_model_cards() + tuned}

    @app.get("/v1/models/{model:path}")
    def retrieve_model(request: Request, model: str) -> dict[str, Any]:
        return public(find_model(request, model)[0])

    @app.delete("/v1/models/{model:path}")
    def delete_model(request: Request, model: str) -> dict[str, Any]:
        card, target = find_model(request, model)
        if card["owned_by"] == "system":
            raise ApiError(403, f"'{model}' is a base model; only your fine-tuned models can be deleted.", param="model",
                           kind="permission_error", code="model_not_deletable")
        if store.get("model", model, request.state.owner) is None:
            raise bad_request(f"'{model}' is a checkpoint; delete the fine-tuned model of its job instead.", "model")
        store.delete("model", model)
        engine.forget(target.weights)
        return {"id": model, "object": "model", "deleted": True}

    # -- chat completions -----------------------------------------------------------------------
    def parse_chat(body: dict[str, Any], base: catalogue.LocalBase) -> tuple[list[dict[str, Any]], Sampling, bool, structured.Answering]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty list of {role, content} objects.", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool", "function"):
                raise bad_request(f"messages[{i}] needs a 'role' of system, developer, user, assistant or tool.", f"messages[{i}].role")
            content = m.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise bad_request(f"messages[{i}].content must be a string or a list of content parts.", f"messages[{i}].content")
            if isinstance(content, list) and not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                                     for p in content):
                raise bad_request(f"messages[{i}].content: the local backend takes only text parts "
                                  "({'type': 'text', 'text': '...'}).", f"messages[{i}].content")
            calls = m.get("tool_calls")
            if calls is not None and not (isinstance(calls, list) and all(
                    isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
                    and isinstance(c["function"].get("arguments"), str) for c in calls)):
                raise bad_request(f"messages[{i}].tool_calls must be a list of {{'function': {{'name', 'arguments'}}}} objects.",
                                  f"messages[{i}].tool_calls")
            call = m.get("function_call")
            if call is not None and not (isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("arguments"), str)):
                raise bad_request(f"messages[{i}].function_call must be an object with 'name' and 'arguments' strings.",
                                  f"messages[{i}].function_call")
        messages = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
        limit = base.max_completion_tokens
        requested = body.get("max_completion_tokens", body.get("max_tokens"))
        if requested is None:
            max_tokens = 256
        elif isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise bad_request("'max_completion_tokens' (or 'max_tokens') must be a positive whole number.", "max_tokens")
        elif requested > limit:
            raise bad_request(f"max_tokens is too large: {requested}. This model supports at most {limit} completion tokens.", "max_tokens",
                              code="invalid_value")
        else:
            max_tokens = requested

        def number(name: str, low: float, high: float, default: float) -> float:
            value = body.get(name)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise bad_request(f"'{name}' must be a number between {low:g} and {high:g}, got {value!r}.", name)
            return float(value)

        temperature, top_p = number("temperature", 0, 2, 0.0), number("top_p", 0, 1, 1.0)
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
            raise bad_request("'n' must be a whole number from 1 to 8 on the local backend.", "n")
        stop = body.get("stop")
        stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise bad_request("'stop' must be a string or a list of up to 4 non-empty strings.", "stop")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise bad_request("'seed' must be a whole number.", "seed")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise bad_request("'stream' must be true or false.", "stream")
        try:
            answering = structured.answering(body)
        except structured.RequestError as exc:
            raise bad_request(str(exc), exc.param, code=exc.code) from None
        return messages, Sampling(max_tokens, temperature, top_p, n, stop, seed, answering.grammar), stream, answering

    def answer_message(text: str, reason: str, answering: structured.Answering) -> tuple[dict[str, Any], str]:
        """The assistant message of one answer, and its finish reason: tool calls the model wrote, when it may call
        tools, come back as ``tool_calls`` (content null when it wrote nothing else) with finish reason "tool_calls"."""
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if answering.read_tool_calls and reason == "stop":
            content, calls = structured.read_tool_calls(text, answering.function_list)
            if calls:
                return {**message, "content": content, "tool_calls": calls}, "tool_calls"
        return message, reason

    def completion_body(ident: str, model: str, created: int, answers: list[tuple[dict[str, Any], str]], prompt: int, completion: int,
                        extra: dict[str, Any]) -> dict[str, Any]:
        """A chat.completion with ``answers`` (each an assistant message and its finish reason: ``answer_message``)."""
        return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": i, "message": m, "finish_reason": r, "logprobs": None} for i, (m, r) in enumerate(answers)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                        "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
                "service_tier": "default", "system_fingerprint": "fp_workbook_local", **extra}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        import asyncio

        body = await json_body(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("'model' is required.", "model")
        card, target = find_model(request, model)
        asked, sampling, stream, answering = parse_chat(body, target.base)
        messages = with_tools(asked, answering.function_list)  # what the model sees
        prompt_tokens = await asyncio.get_running_loop().run_in_executor(None, engine.prompt_tokens, target.base, messages)
        if prompt_tokens + sampling.max_tokens > target.base.context_length:
            raise bad_request(f"This model's maximum context length is {target.base.context_length:,} tokens. However, your "
                              f"messages resulted in {prompt_tokens:,} tokens and {sampling.max_tokens:,} were asked for the "
                              "completion. Shorten the messages or lower max_tokens.", "messages", code="context_length_exceeded")
        store_it = body.get("store", False)
        metadata = check_metadata(body.get("metadata"))
        ident, created = new_id("chatcmpl"), now()
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            def chunk(delta: dict, reason: str | None, usage: dict | None = None, choices: bool = True) -> str:
                data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                        "service_tier": "default", "system_fingerprint": "fp_workbook_local",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}] if choices else [],
                        "usage": usage}
                return f"data: {json.dumps(data)}\n\n"

            async def events():
                closed = threading.Event()  # set when the client is gone: the engine stops generating
                pieces = engine.stream(target, messages, sampling, closed)
                loop = asyncio.get_running_loop()
                try:
                    yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
                    text = ""
                    while (item := await loop.run_in_executor(None, next, pieces, None)) is not None:
                        piece, reason, prompt_tokens, used = item
                        text += piece
                        if piece and not answering.read_tool_calls:  # an answer that may call tools is sent whole at its end
                            yield chunk({"content": piece}, None)
                        if reason is not None:
                            message, shown_reason = answer_message(text, reason, answering)
                            if answering.read_tool_calls:
                                if message["content"]:
                                    yield chunk({"content": message["content"]}, None)
                                if message.get("tool_calls"):
                                    yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]}, None)
                            yield chunk({}, shown_reason)
                            if include_usage:
                                yield chunk({}, None, {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                                                       "total_tokens": prompt_tokens + used}, choices=False)
                            if store_it:
                                store.put("completion", {**completion_body(ident, model, created, [(message, shown_reason)], prompt_tokens, used,
                                                                           {"metadata": metadata or {}}), "_request": asked},
                                          request.state.owner)
                    yield "data: [DONE]\n\n"
                finally:
                    closed.set()

            return ClosingStreamingResponse(events(), media_type="text/event-stream")
        result = await asyncio.wrap_future(engine.submit(target, messages, sampling))
        answers = [answer_message(text, reason, answering) for text, reason in zip(result.texts, result.finish_reasons)]
        response = completion_body(ident, model, created, answers, result.prompt_tokens, result.completion_tokens,
                                   {"metadata": metadata or {}} if store_it else {})
        if store_it:
            store.put("completion", {**response, "_request": asked}, request.state.owner)
        return response

    @app.get("/v1/chat/completions")
    def list_completions(request: Request, model: str | None = None, after: str | None = None, limit: str | None = None,
                         order: str = "asc") -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise bad_request("'order' must be 'asc' or 'desc'.", "order")
        wanted = metadata_filter(request)

        def match(c: dict[str, Any]) -> bool:
            return (model is None or c["model"] == model) and metadata_matches(c, wanted)

        items, more = store.page("completion", request.state.owner, after=after, limit=limit_param(limit), newest_first=order == "desc", where=match)
        return page(items, more, first_last=True)

    @app.get("/v1/chat/completions/{completion_id}")
    def retrieve_completion(request: Request, completion_id: str) -> dict[str, Any]:
        return public(owned(request, "completion", completion_id, "chat completion", "completion_id"))

    @app.delete("/v1/chat/completions/{completion_id}")
    def delete_completion(request: Request, completion_id: str) -> dict[str, Any]:
        """Delete a stored completion (one made with ``store=True``): its request and answer are gone from the server."""
        owned(request, "completion", completion_id, "chat completion", "completion_id")
        store.delete("completion", completion_id)
        return {"id": completion_id, "object": "chat.completion.deleted", "deleted": True}

    @app.get("/v1/chat/completions/{completion_id}/messages")
    def completion_messages(request: Request, completion_id: str) -> dict[str, Any]:
        body = owned(request, "completion", completion_id, "chat completion", "completion_id")
        data = [{"id": f"{completion_id}-{i}", **{k: v for k, v in m.items() if k in ("role", "content", "name")}}
                for i, m in enumerate(body["_request"])]
        return {"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"], "has_more": False}

    return app
