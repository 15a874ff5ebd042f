"""The chat-completions contract on both engines (one suite, parametrised): the in-process engine and vLLM.

Each test talks to a real ``workbook serve`` over HTTP with the official, strict ``openai`` client: once with
``--engine local`` and once with ``--engine vllm`` (vLLM from the environment ``make vllm`` makes, started by the server
on loopback). Answers, streams, stop strings, seeds, ``n``, structured output, tool calls and the 400s must be OpenAI's
on both. The last tests are vLLM's own: a fine-tuned model's adapter reaches it, answers as the in-process engine
answers, is unloaded when its model is deleted, and is loaded again after vLLM restarts.
"""
from __future__ import annotations

import json
import socket
import time
from typing import Literal

import httpx
import openai
import pydantic
import pytest
from conftest import DATA, head_lines
from server_harness import ServerProcess, wait_for_job

TRAIN = DATA / "billing" / "train.jsonl"
ENGINES = ("local", "vllm")


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tmp_path_factory):
    """``workbook serve --engine ENGINE``; vLLM's server takes longer to start (measured here: 30-40 s). The vLLM one runs
    in fp32, where the two engines agree token for token (bf16 roundings differ between their kernels: see
    ``test_a_tuned_model_answers_through_vllm_as_the_in_process_engine_does``)."""
    process = ServerProcess(tmp_path_factory.mktemp(f"chat-{request.param}") / "data", "--engine", request.param,
                            env={"WORKBOOK_PRECISION": "fp32"} if request.param == "vllm" else {})
    process.engine = request.param
    yield process.start(timeout_s=900)
    process.stop()


def test_streaming_gives_the_same_text_as_a_plain_call(server):
    client = server.client()
    messages = [{"role": "user", "content": "Name three colours."}]
    plain = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=20)
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=20, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage.completion_tokens == plain.usage.completion_tokens


def _open_stream(server, max_tokens: int) -> socket.socket:
    """A raw HTTP client that asks for a long stream and reads nothing (as a stalled browser tab would)."""
    body = json.dumps({"model": "gpt-4.1-mini", "max_tokens": max_tokens, "stream": True,
                       "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server soon cannot send more
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer key-alice\r\n"
                 b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


def _unread(sock: socket.socket) -> bytes:
    """What the server has sent so far on a raw stream (its first 2,000 bytes), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(2000)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


def _streams(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()["inference"]


def _wait_for_no_streams(server, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while _streams(server)["streams_active"] and time.monotonic() < deadline:
        time.sleep(0.2)


def test_a_stream_nobody_reads_holds_up_no_one(server):
    _wait_for_no_streams(server)
    before = _streams(server)
    # greedy, the story runs to max_tokens (1,500 of 1,500 measured on the local engine). 600 tokens once ended while
    # the requests below ran (CI, stop 41, on vLLM: the server's socket buffers took the unread stream whole)
    sock = _open_stream(server, 2048)
    try:
        deadline = time.monotonic() + 30
        while _streams(server)["streams_active"] == before["streams_active"] and time.monotonic() < deadline:
            time.sleep(0.1)
        # failed once in CI on vLLM (stop 39, not seen here in 3 runs): what the stream sent, and the server's log
        assert _streams(server)["streams_active"] == before["streams_active"] + 1, (_streams(server), _unread(sock), server.log_tail())
        client = server.client("key-bob")
        # A stream nobody reads never ends, so a request it held up would wait until the socket closes. Those here took
        # 0.5-0.6 s on vLLM; one took 9.9 s on vLLM in CI (2026-12-05, unexplained): 30 s tells the two apart.
        for i in range(3):
            started = time.monotonic()
            reply = client.chat.completions.create(model="gpt-4.1-mini", max_tokens=4, timeout=60,
                                                   messages=[{"role": "user", "content": f"Say {i}."}])
            assert reply.usage.completion_tokens <= 4 and time.monotonic() - started < 30, time.monotonic() - started
            if i == 0:  # the first was asked and answered while the stream was open: it is what the test is about
                assert _streams(server)["streams_active"] == before["streams_active"] + 1, _streams(server)
    finally:
        sock.close()


def test_a_stream_whose_client_leaves_stops_generating(server):
    _wait_for_no_streams(server)  # the previous test's stream, closed unread, ends by itself
    before = _streams(server)
    sock = _open_stream(server, 600)
    received = b""
    while b"data:" not in received:  # the stream began: headers, then its first chunk
        received += sock.recv(4096)
    assert received.startswith(b"HTTP/1.1 200") and _streams(server)["streams_active"] == before["streams_active"] + 1
    sock.close()
    deadline = time.monotonic() + 15  # its 600 tokens would take far longer
    while _streams(server)["streams_active"] > before["streams_active"] and time.monotonic() < deadline:
        time.sleep(0.2)
    after = _streams(server)
    assert after["streams_active"] == before["streams_active"]
    assert after["streams_closed_early"] == before["streams_closed_early"] + 1


def test_streams_honour_stop_strings_and_seeds(server):
    client = server.client()
    messages = [{"role": "user", "content": "Count from one to twenty in words, separated by commas."}]

    def streamed(**kwargs) -> tuple[str, str]:
        pieces, finish = [], None
        for chunk in client.chat.completions.create(model="gpt-4.1-mini", messages=messages, stream=True, **kwargs):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return "".join(pieces), finish

    plain = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=30, stop=["five"])
    assert streamed(max_tokens=30, stop=["five"]) == (plain.choices[0].message.content, plain.choices[0].finish_reason)
    assert "five" not in plain.choices[0].message.content
    sampled = streamed(max_tokens=12, temperature=1.0, seed=7)
    assert streamed(max_tokens=12, temperature=1.0, seed=7) == sampled  # a seed makes a sampled stream repeatable


LOOKUP_TOOL = {"type": "function", "function": {"name": "lookup_cpt_code", "description": "Look up a CPT code.", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"], "additionalProperties": False}}}
CLAIM_TOOL = {"type": "function", "function": {"name": "submit_claim", "description": "Submit a claim.", "parameters": {
    "type": "object", "properties": {"code": {"type": "string", "pattern": "^[0-9]{5}$"}, "units": {"type": "integer"}},
    "required": ["code", "units"], "additionalProperties": False}}}
CODE_SCHEMA = {"type": "object", "properties": {"code": {"type": "string", "enum": ["80061", "85025", "99213"]}},
               "required": ["code"], "additionalProperties": False}
ASK = [{"role": "system", "content": "You are a medical billing assistant."}, {"role": "user", "content": "Lipid panel drawn today."}]


def test_json_schema_answers_parse_and_match_the_schema_streamed_or_not(server):
    """As the Cookbook's distillation notebook asks: a strict json_schema with an enum; json.loads always works."""
    client = server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "cpt_code", "strict": True, "schema": CODE_SCHEMA}}
    reply = client.chat.completions.create(model="gpt-4.1-mini", messages=ASK, max_tokens=32, response_format=fmt, n=2, temperature=1, seed=3)
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        assert json.loads(choice.message.content)["code"] in CODE_SCHEMA["properties"]["code"]["enum"]
    class Code(pydantic.BaseModel):  # the client's own structured-output helper sends a strict schema from a model
        code: Literal["80061", "85025", "99213"]
    parsed = client.chat.completions.parse(model="gpt-4.1-mini", messages=ASK, max_tokens=32, response_format=Code)
    assert parsed.choices[0].message.parsed.code in CODE_SCHEMA["properties"]["code"]["enum"]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-4.1-mini", messages=ASK, max_tokens=32, response_format=fmt, stream=True) if c.choices)
    assert json.loads(streamed)["code"] in CODE_SCHEMA["properties"]["code"]["enum"]


def test_json_object_needs_the_word_json_and_answers_an_object(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4.1-mini", messages=ASK, max_tokens=8, response_format={"type": "json_object"})
    assert caught.value.body["param"] == "messages" and "json" in caught.value.body["message"]
    reply = client.chat.completions.create(model="gpt-4.1-mini", messages=[*ASK, {"role": "user", "content": "Reply in JSON."}],
                                           max_tokens=64, response_format={"type": "json_object"})
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # a length cut leaves a prefix of an object
        assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("choice, name", [("required", None), ({"type": "function", "function": {"name": "submit_claim"}}, "submit_claim")])
def test_required_and_named_tool_choice_return_tool_calls_streamed_or_not(server, choice, name):
    client = server.client()
    tools = [LOOKUP_TOOL, CLAIM_TOOL]
    reply = client.chat.completions.create(model="gpt-4.1-mini", messages=ASK, max_tokens=64, tools=tools, tool_choice=choice,
                                           parallel_tool_calls=False)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in (name or "lookup_cpt_code submit_claim")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == set(next(t for t in tools if t["function"]["name"] == call.function.name)["function"]["parameters"]["required"])
    if call.function.name == "submit_claim":
        assert len(arguments["code"]) == 5 and arguments["code"].isdigit() and isinstance(arguments["units"], int)
    chunks = list(client.chat.completions.create(model="gpt-4.1-mini", messages=ASK, max_tokens=64, tools=tools, tool_choice=choice,
                                                 parallel_tool_calls=False, stream=True, store=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and len(deltas) == 1
    assert deltas[0][0].function.name == call.function.name and json.loads(deltas[0][0].function.arguments) == arguments
    stored = client.chat.completions.retrieve(chunks[0].id)  # stored as it was streamed, the same call id
    assert stored.choices[0].finish_reason == "tool_calls" and stored.choices[0].message.tool_calls[0].id == deltas[0][0].id


def test_tool_choice_none_answers_in_text(server):
    reply = server.client().chat.completions.create(model="gpt-4.1-mini", messages=ASK, max_tokens=16, tools=[LOOKUP_TOOL], tool_choice="none")
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")


OPEN_TOOL = {"type": "function", "function": {"name": "lookup_cpt_code", "description": "Look up a CPT code.", "parameters": {
    "type": "object", "properties": {"query": {"type": "string", "maxLength": 16}}, "required": ["query"]}}}  # says nothing of other keys


def test_a_forced_call_holds_only_the_keys_its_function_declares(server):
    """A schema without ``additionalProperties`` is read as OpenAI's strict mode reads it: the call ends after the
    declared keys instead of running to max_tokens on invented ones."""
    reply = server.client().chat.completions.create(model="gpt-4.1-mini", messages=ASK, max_tokens=64, tools=[OPEN_TOOL],
                                                    tool_choice="required", parallel_tool_calls=False)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert set(json.loads(reply.choices[0].message.tool_calls[0].function.arguments)) == {"query"}


def test_a_call_cut_off_by_max_tokens_comes_back_in_tool_calls_with_finish_reason_length(server):
    """As OpenAI answers: the call in ``tool_calls``, its arguments cut short, never the model's own text of it."""
    client = server.client()
    asked = {"model": "gpt-4.1-mini", "messages": ASK, "max_tokens": 20, "tools": [LOOKUP_TOOL], "tool_choice": "required"}
    reply = client.chat.completions.create(**asked)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "length" and message.content is None
    assert [c.function.name for c in message.tool_calls] == ["lookup_cpt_code"]
    arguments = message.tool_calls[0].function.arguments
    assert '{"query": "'.startswith(arguments) or arguments.startswith('{"query": "')
    chunks = list(client.chat.completions.create(**asked, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices and (c.choices[0].delta.tool_calls or c.choices[0].delta.content)]
    assert chunks[-1].choices[0].finish_reason == "length" and not any(d.content for d in deltas)
    assert [(d.tool_calls[0].function.name, d.tool_calls[0].function.arguments) for d in deltas] == [("lookup_cpt_code", arguments)]


@pytest.mark.parametrize("extra, param, code", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}}, "response_format", "invalid_json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": CODE_SCHEMA}}}, "response_format.json_schema", None),
    ({"response_format": {"type": "yaml"}}, "response_format", None),
    ({"tool_choice": "required"}, "tool_choice", None),
    ({"tools": [LOOKUP_TOOL], "tool_choice": {"type": "function", "function": {"name": "submit_claim"}}}, "tool_choice", None),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0]", None),
    ({"functions": [LOOKUP_TOOL["function"]]}, "functions", "unsupported_parameter"),
])
def test_what_the_local_server_cannot_honour_is_a_400_not_silence(server, extra, param, code):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "Code a CBC."}], max_tokens=8, **extra)
    assert caught.value.body["param"] == param and caught.value.body["code"] == code
    plain = client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "Hi."}], max_tokens=4,
                                           response_format={"type": "text"}, tool_choice="none")
    assert plain.choices[0].message.content is not None  # what it can honour still works


def test_max_tokens_stop_and_n(server):
    client = server.client()
    messages = [{"role": "user", "content": "Count from one to twenty in words, separated by commas."}]
    short = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    # greedy (temperature 0 by default), so the answer is reproducible on this machine; stop at a piece of its middle
    whole = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=40).choices[0].message.content
    stop = whole[len(whole) // 2 :][:2]
    stopped = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=40, stop=[stop])
    assert stopped.choices[0].message.content == whole[: whole.index(stop)] and stopped.choices[0].finish_reason == "stop"
    several = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=5, n=2, temperature=1.0, seed=1)
    assert [c.index for c in several.choices] == [0, 1]
    # greedy n answers are n copies of the one answer, each billed (n greedy sequences were once a 500 on the local engine)
    one = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=5)
    greedy = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=5, n=2)
    assert [c.message.content for c in greedy.choices] == [one.choices[0].message.content] * 2
    assert greedy.usage.completion_tokens == 2 * one.usage.completion_tokens




# --- vLLM's own: a fine-tuned model's adapter reaches it -------------------------------------------------

HELD_OUT = [json.loads(line)["messages"][:-1] for line in (DATA / "billing" / "test.jsonl").read_text().splitlines()[:16]]
TUNED_KEY = "key-tuned"


@pytest.fixture(scope="module")
def tuned(server, tmp_path_factory):
    """A billing model trained on the server under test (training is the server's own; its adapter answers through
    the server's engine)."""
    client = server.client(TUNED_KEY)
    path = tmp_path_factory.mktemp("tuned") / "train.jsonl"
    path.write_bytes(head_lines(TRAIN, 16))
    file = client.files.create(file=open(path, "rb"), purpose="fine-tune")
    job = wait_for_job(client, client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-mini", seed=7, suffix="billing",
                                                              hyperparameters={"n_epochs": 2, "batch_size": 4}).id)
    assert job.status == "succeeded", job.error
    return job


def _answers(server, model: str) -> list[openai.types.chat.chat_completion.Choice]:
    from helpers.course.sending import send_all

    client = server.client(TUNED_KEY)
    return send_all(lambda m: client.chat.completions.create(model=model, messages=m, max_tokens=32).choices[0], HELD_OUT, 16)


def _inference(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()["inference"]


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_a_tuned_model_answers_through_vllm_as_the_in_process_engine_does(server, tuned, monkeypatch):
    """The same adapter files, the same prompts, both in fp32: vLLM's greedy answers against the in-process engine's
    (run here, in the test's own process, as the server runs it), token for token. In bf16 they part (measured on a
    Xeon with AMX, 2026-12-05: 6 of 16 answers of a small adapter the same, 9 of 16 of the base): each engine's bf16
    kernels round differently, and a 135M model's greedy path turns on small differences."""
    from helpers.pricing.catalogue import default_local_base
    from helpers.server.inference import LocalEngine, Sampling, Target
    from helpers.server.shared import SharedModels
    from helpers.server.store import Store, owner_of

    through_vllm = _answers(server, tuned.fine_tuned_model)
    assert _inference(server)["adapters_loaded"] == 1
    weights = Store(server.data_dir).model_dir(owner_of(TUNED_KEY), tuned.fine_tuned_model)
    monkeypatch.setenv("WORKBOOK_PRECISION", "fp32")
    engine = LocalEngine(SharedModels(1))
    futures = [engine.submit(Target(default_local_base(), weights), messages, Sampling(max_tokens=32)) for messages in HELD_OUT]
    in_process = [(g.texts[0], g.finish_reasons[0]) for g in (future.result() for future in futures)]
    assert [(a.message.content, a.finish_reason) for a in through_vllm] == in_process
    assert sum(reason == "stop" for _, reason in in_process) >= 8  # most stop at the end-of-turn token, as trained


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_a_vllm_that_dies_is_started_again_and_the_adapter_loaded_again(server, tuned):
    import os
    import signal

    client = server.client(TUNED_KEY)  # one request loads the adapter (the 16 of _answers cost 20 s more here)
    before = client.chat.completions.create(model=tuned.fine_tuned_model, messages=HELD_OUT[0], max_tokens=32)
    stats = _inference(server)
    os.killpg(os.getpgid(stats["pid"]), signal.SIGKILL)  # vLLM and its engine process, as an out-of-memory kill would
    after = client.chat.completions.create(model=tuned.fine_tuned_model, messages=HELD_OUT[0], max_tokens=32)
    assert after.choices[0].message.content == before.choices[0].message.content
    now = _inference(server)
    assert now["restarts"] == stats["restarts"] + 1 and now["pid"] != stats["pid"] and now["adapters_loaded"] == 1


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_deleting_a_tuned_model_unloads_its_adapter_from_vllm(server, tuned):
    client = server.client(TUNED_KEY)
    client.chat.completions.create(model=tuned.fine_tuned_model, messages=HELD_OUT[0], max_tokens=4)
    assert _inference(server)["adapters_loaded"] == 1
    with pytest.raises(openai.NotFoundError):  # another key cannot reach it, on vLLM or anywhere
        server.client("key-other").chat.completions.create(model=tuned.fine_tuned_model, messages=HELD_OUT[0], max_tokens=4)
    assert client.models.delete(tuned.fine_tuned_model).deleted
    assert _inference(server)["adapters_loaded"] == 0
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=tuned.fine_tuned_model, messages=HELD_OUT[0], max_tokens=4)
