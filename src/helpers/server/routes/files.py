"""``/v1/files``: upload (multipart, size-checked before the body is read, sniffed as JSON Lines), list, get,
content, delete."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from helpers.data.chat_format import text_problem
from helpers.server.errors import ApiError, bad_request, too_large
from helpers.server.protocol import page, public
from helpers.server.queries import limit_param, newest_first
from helpers.server.state import Owner, ServerState, State, owned
from helpers.server.store import new_id, now

router = APIRouter(prefix="/v1/files")
FILE_PURPOSES = {"fine-tune"}


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


def _check_storage(state: ServerState, owner: str, size: int) -> None:
    """413 when the key's files would take more than ``max_storage_bytes`` together."""
    limit = state.limits.max_storage_bytes
    if limit is None:
        return
    used = sum(f["bytes"] for _, f in state.store.all("file", owner=owner))
    if used + size > limit:
        raise ApiError(413, f"Your files on this server would take {used + size:,} bytes; each key may keep up to "
                            f"{limit:,}. Delete files you no longer need (client.files.delete).",
                       param="file", code="storage_limit_reached")


@router.post("")
async def create_file(request: Request, state: State, owner: Owner) -> dict[str, Any]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("Upload files as multipart/form-data with fields 'file' and 'purpose'.")
    limit = state.limits.max_upload_bytes
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
    _check_storage(state, owner, len(data))
    file_id = new_id("file")
    await run_in_threadpool(state.store.write_file, owner, file_id, data)  # fsync: off the event loop
    body = {"object": "file", "id": file_id, "purpose": purpose, "filename": filename, "bytes": len(data),
            "created_at": now(), "status": "processed"}
    return public(state.store.put("file", body, owner))


@router.get("")
def list_files(state: State, owner: Owner, purpose: str | None = None, limit: str | None = None, order: str = "desc",
               after: str | None = None) -> dict[str, Any]:
    items, more = state.store.page("file", owner, after=after, limit=limit_param(limit, 10_000, 10_000),
                                   newest_first=newest_first(order), where=(lambda f: f["purpose"] == purpose) if purpose else None)
    return page(items, more, first_last=True)


def owned_file(state: ServerState, owner: str, file_id: str) -> dict[str, Any]:
    return owned(state, owner, "file", file_id, "file", "file_id")


@router.get("/{file_id}")
def retrieve_file(state: State, owner: Owner, file_id: str) -> dict[str, Any]:
    return public(owned_file(state, owner, file_id))


@router.get("/{file_id}/content")
def file_content(state: State, owner: Owner, file_id: str) -> Response:
    owned_file(state, owner, file_id)
    return Response(state.store.file_path(owner, file_id).read_bytes(), media_type="application/octet-stream")


@router.delete("/{file_id}")
def delete_file(state: State, owner: Owner, file_id: str) -> dict[str, Any]:
    owned_file(state, owner, file_id)
    state.store.delete("file", file_id)
    state.store.file_path(owner, file_id).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}
