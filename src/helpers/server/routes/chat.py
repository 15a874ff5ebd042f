"""``/v1/chat/completions``: answers (streamed or whole, tool calls and structured output through a grammar), and the
completions stored with ``store=True``: list, get, their messages, delete."""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError

from helpers.server import structured
from helpers.server.errors import ApiError, bad_request
from helpers.server.protocol import MODEL_REQUIRED, ChatCompletion, page
from helpers.server.queries import limit_param, metadata_filter, metadata_matches, newest_first
from helpers.server.records import StoredCompletion
from helpers.server.routes.models import find_model
from helpers.server.state import Owner, ServerState, State, json_body, owned, parsed
from helpers.server.store import new_id, now

router = APIRouter(prefix="/v1/chat/completions")
FINGERPRINT = "fp_workbook_local"


class ClosingStreamingResponse(StreamingResponse):
    """A stream whose generator is closed as soon as the response ends, sent or not (the client may be gone), so
    its ``finally`` stops the generation at once instead of whenever the garbage collector finds it."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]  # our bodies are async generators


def answer_message(text: str, reason: str, answering: structured.Answering) -> tuple[dict[str, Any], str]:
    """The assistant message of one answer, and its finish reason: tool calls the model wrote, when it may call
    tools, come back as ``tool_calls`` (content null when it wrote nothing else) with finish reason "tool_calls"; calls
    cut off by ``max_tokens`` come back as OpenAI returns them, in ``tool_calls`` with their arguments cut short and
    finish reason "length" (never as the text the model wrote them in)."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if answering.read_tool_calls and reason == "stop":
        content, calls = structured.read_tool_calls(text, answering.function_list, answering.calls)
        if calls:
            return {**message, "content": content, "tool_calls": calls}, "tool_calls"
    if answering.read_tool_calls and reason == "length":
        cut = structured.read_cut_tool_calls(text, answering.function_list, answering.calls)
        if cut is not None:
            content, calls = cut
            return ({**message, "content": content, "tool_calls": calls} if calls else {**message, "content": content}), "length"
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
            "service_tier": "default", "system_fingerprint": FINGERPRINT, **extra}


def chunk(ident: str, created: int, model: str, delta: dict, reason: str | None, usage: dict | None = None, choices: bool = True) -> str:
    """One server-sent event of a streamed answer."""
    data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}] if choices else [],
            "usage": usage}
    return f"data: {json.dumps(data)}\n\n"


@router.post("")
async def chat_completions(request: Request, state: State, owner: Owner):
    body = await json_body(request)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request(MODEL_REQUIRED, "model")  # before the model is looked up, as the body's other fields are checked after
    _, target = find_model(state, owner, body["model"])
    unavailable = state.engine.unavailable(target.base)
    if unavailable is not None:
        raise ApiError(404, f"The model '{body['model']}' cannot answer on this server: {unavailable}", param="model",
                       code="model_not_available")
    asked = parsed(body, ChatCompletion)
    model, engine, loop = asked.model, state.engine, asyncio.get_running_loop()
    try:  # the model's tool-call format: its template's own, or the project's
        answering = structured.answering(body, await loop.run_in_executor(None, engine.call_format, target.base))
    except structured.RequestError as exc:
        raise bad_request(str(exc), exc.param, code=exc.code) from None
    sampling = asked.sampling(target.base.max_completion_tokens, answering.grammar)
    messages, functions = asked.messages, answering.function_list  # the model sees both, through its chat template
    try:
        prompt_tokens = await loop.run_in_executor(None, engine.prompt_tokens, target.base, messages, functions)
    except TemplateError as exc:  # a brought model's template refuses the conversation (Gemma's: roles must alternate)
        raise bad_request(f"The chat template of {model} refuses these messages: {exc}. Send them in an order it "
                          "accepts.", "messages", code="invalid_messages") from None
    if prompt_tokens + sampling.max_tokens > target.base.context_length:
        raise bad_request(f"This model's maximum context length is {target.base.context_length:,} tokens. However, your "
                          f"messages resulted in {prompt_tokens:,} tokens and {sampling.max_tokens:,} were asked for the "
                          "completion. Shorten the messages or lower max_tokens.", "messages", code="context_length_exceeded")
    store_it, metadata = asked.store, asked.metadata
    ident, created = new_id("chatcmpl"), now()
    if asked.stream:
        def keep(message: dict[str, Any], reason: str, prompt: int, used: int) -> None:
            if store_it:
                keep_completion(state, owner, completion_body(ident, model, created, [(message, reason)], prompt, used,
                                                              {"metadata": metadata or {}}), asked.messages)

        events = stream_events(state, target, messages, sampling, answering, asked.include_usage, (ident, created, model), keep)
        return ClosingStreamingResponse(events, media_type="text/event-stream")
    result = await asyncio.wrap_future(engine.submit(target, messages, sampling, functions))
    answers = [answer_message(text, reason, answering) for text, reason in zip(result.texts, result.finish_reasons)]
    response = completion_body(ident, model, created, answers, result.prompt_tokens, result.completion_tokens,
                               {"metadata": metadata or {}} if store_it else {})
    if store_it:
        keep_completion(state, owner, response, asked.messages)
    return response


async def stream_events(state, target, messages, sampling, answering: structured.Answering, include_usage: bool,
                        head: tuple[str, int, str], keep):
    """The server-sent events of one streamed answer; ``keep(message, reason, prompt_tokens, used)`` at its end."""
    closed = threading.Event()  # set when the client is gone: the engine stops generating
    pieces = state.engine.stream(target, messages, sampling, closed, answering.function_list)
    loop = asyncio.get_running_loop()
    try:
        yield chunk(*head, {"role": "assistant", "content": "", "refusal": None}, None)
        text = ""
        while (item := await loop.run_in_executor(None, next, pieces, None)) is not None:
            piece, reason, prompt_tokens, used = item
            text += piece
            if piece and not answering.read_tool_calls:  # an answer that may call tools is sent whole at its end
                yield chunk(*head, {"content": piece}, None)
            if reason is not None:
                message, shown_reason = answer_message(text, reason, answering)
                if answering.read_tool_calls:
                    if message["content"]:
                        yield chunk(*head, {"content": message["content"]}, None)
                    if message.get("tool_calls"):
                        yield chunk(*head, {"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]}, None)
                yield chunk(*head, {}, shown_reason)
                if include_usage:
                    yield chunk(*head, {}, None, {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                                                  "total_tokens": prompt_tokens + used}, choices=False)
                keep(message, shown_reason, prompt_tokens, used)
        yield "data: [DONE]\n\n"
    finally:
        closed.set()


@router.get("")
def list_completions(request: Request, state: State, owner: Owner, model: str | None = None, after: str | None = None,
                     limit: str | None = None, order: str = "asc") -> dict[str, Any]:
    newest = newest_first(order)
    wanted = metadata_filter(request)

    def match(c: dict[str, Any]) -> bool:
        return (model is None or c["model"] == model) and metadata_matches(c, wanted)

    items, more = state.store.page("completion", owner, after=after, limit=limit_param(limit), newest_first=newest, where=match)
    return page(items, more, first_last=True)


def keep_completion(state: ServerState, owner: str, response: dict[str, Any], request: list[dict[str, Any]]) -> None:
    """A completion made with ``store=True``, kept with the messages it answered."""
    state.store.put("completion", StoredCompletion.model_validate({**response, "request": request}).stored(), owner)


def owned_completion(state: ServerState, owner: str, completion_id: str) -> StoredCompletion:
    return StoredCompletion.model_validate(owned(state, owner, "completion", completion_id, "chat completion", "completion_id"))


@router.get("/{completion_id}")
def retrieve_completion(state: State, owner: Owner, completion_id: str) -> dict[str, Any]:
    return owned_completion(state, owner, completion_id).wire()


@router.delete("/{completion_id}")
def delete_completion(state: State, owner: Owner, completion_id: str) -> dict[str, Any]:
    """Delete a stored completion (one made with ``store=True``): its request and answer are gone from the server."""
    owned_completion(state, owner, completion_id)
    state.store.delete("completion", completion_id)
    return {"id": completion_id, "object": "chat.completion.deleted", "deleted": True}


@router.get("/{completion_id}/messages")
def completion_messages(state: State, owner: Owner, completion_id: str) -> dict[str, Any]:
    asked = owned_completion(state, owner, completion_id).request
    data = [{"id": f"{completion_id}-{i}", **{k: v for k, v in m.items() if k in ("role", "content", "name")}}
            for i, m in enumerate(asked)]
    return {"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"], "has_more": False}
