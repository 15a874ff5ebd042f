"""Answers in OpenAI's shapes: tool calls and structured output, by constrained decoding (llguidance).

What a chat request asks of its answer (``tools``, ``tool_choice``, ``parallel_tool_calls``, ``response_format``)
becomes an ``Answering``: the functions shown to the model (through its chat template, as a fine-tuned model was
trained on them), whether tool calls are read out of the answer and in which format (``chat_template.CallFormat``: the
template's own, or the project's), and a grammar the answer must follow:

* ``response_format`` ``json_schema`` (strict or not): the answer is JSON valid against the schema;
  ``json_object``: the answer is a JSON object (and, as on OpenAI, the messages must mention JSON);
* ``tool_choice`` ``"required"``: the answer is one or more calls of the given functions, their arguments valid
  against each function's ``parameters``; a named function: exactly one call of it; ``"auto"``: the model may
  call (with ``response_format`` too: the answer is either such JSON or calls); ``"none"``: plain text.

A grammar is llguidance's Lark text (JSON schemas embedded as ``%json``, calls in the model's format around them): the
in-process engine masks out, at each token, the tokens that would break it, and vLLM's guidance backend takes the same
text as a structured-outputs ``grammar``, so both engines follow one grammar.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import torch

from helpers.data.chat_format import NAME_PATTERN
from helpers.server.chat_template import PROJECT_CALLS, CallFormat, functions_of

# JSON as the local models write it (json.dumps' separators), one line: the same text training renders
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class RequestError(ValueError):
    """A request the server cannot honour as asked: a 400 with ``param`` and ``code``."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Answering:
    """How to answer one chat request. ``functions`` is their JSON as the request gave it (hashable, so requests that
    share it batch; key order kept, so the prompt shows them as a training file with the same tools did)."""

    functions: str = "[]"
    read_tool_calls: bool = False
    grammar: str | None = None
    calls: CallFormat = PROJECT_CALLS

    @property
    def function_list(self) -> list[dict[str, Any]]:
        return json.loads(self.functions)


def answering(body: dict[str, Any], calls: CallFormat = PROJECT_CALLS) -> Answering:
    """Read what a chat request asks of its answer, for a model that writes tool calls in the format ``calls``; a
    RequestError names what cannot be honoured."""
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise RequestError("'functions' and 'function_call' are OpenAI's deprecated forms; send 'tools' and 'tool_choice' "
                           "instead (the local server honours those).", "functions" if body.get("functions") is not None else "function_call",
                           code="unsupported_parameter")
    functions = _functions(body.get("tools"))
    choice = body.get("tool_choice", "auto" if functions else "none")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise RequestError("'parallel_tool_calls' must be true or false.", "parallel_tool_calls")
    names = [f["name"] for f in functions]
    only: str | None = None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise RequestError("'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}.",
                               "tool_choice")
        if name not in names:
            raise RequestError(f"tool_choice names the function {name!r}, which is not among 'tools' ({', '.join(names) or 'none given'}).",
                               "tool_choice")
        only = name
    elif choice not in ("none", "auto", "required"):
        raise RequestError(f"'tool_choice' must be 'none', 'auto', 'required' or a named function, got {choice!r}.", "tool_choice")
    elif choice != "none" and not functions:
        raise RequestError(f"tool_choice {choice!r} needs 'tools'.", "tool_choice")
    answer_schema = _response_schema(body)
    call_schemas = tool_call_schemas(functions, only, calls) if functions and choice != "none" else None
    # each on its own, so that an error names the parameter at fault
    answer_grammar = compile_grammar(answer_schema, "response_format") if answer_schema is not None else None
    calls_grammar = compile_lark(calls.grammar(call_schemas, parallel and only is None, JSON_FORMAT), "tools") if call_schemas else None
    if choice == "required" or only is not None:
        grammar = calls_grammar
    elif call_schemas and answer_schema is not None:
        grammar = compile_lark(calls.grammar(call_schemas, parallel, JSON_FORMAT, answer_schema), "response_format")
    else:
        grammar = answer_grammar
    return Answering(json.dumps(functions), call_schemas is not None, grammar, calls)  # as sent: the prompt lists them in this order


def _functions(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise RequestError("'tools' must be a list of {'type': 'function', 'function': {...}} objects.", "tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise RequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': {{...}}}}}}; "
                               "the local server has no built-in tools.", f"tools[{i}]")
        function = tool["function"]
        if not isinstance(function.get("name"), str) or not NAME_PATTERN.match(function["name"]):
            raise RequestError(f"tools[{i}].function.name must match [a-zA-Z0-9_-]{{1,64}}.", f"tools[{i}].function.name")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON Schema object.", f"tools[{i}].function.parameters")
    functions = functions_of(tools)
    names = [f["name"] for f in functions]
    if len(set(names)) < len(names):
        raise RequestError("two tools have the same function name.", "tools")
    return [{k: f[k] for k in ("name", "description", "parameters", "strict") if k in f} for f in functions]


def _response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    response_format = body.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        said = " ".join(str(m.get("content") or "") for m in body.get("messages") or [] if isinstance(m, dict))
        if "json" not in said.lower():
            raise RequestError("'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                               "messages")
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not NAME_PATTERN.match(spec["name"]):
            raise RequestError("response_format.json_schema needs a 'name' matching [a-zA-Z0-9_-]{1,64} and a 'schema'.",
                               "response_format.json_schema")
        if not isinstance(spec.get("schema"), dict):
            raise RequestError("response_format.json_schema.schema must be a JSON Schema object.", "response_format.json_schema.schema")
        return spec["schema"]
    raise RequestError("response_format must be {'type': 'text'}, {'type': 'json_object'} or {'type': 'json_schema', "
                       f"'json_schema': {{...}}}}, got {response_format!r}.", "response_format")


def closed_objects(schema: Any) -> Any:
    """``schema`` with every object that lists its ``properties`` closed to other keys (``additionalProperties``
    false) unless it says otherwise, at any depth: a function's arguments as OpenAI's strict mode reads its schema.

    Why: JSON Schema lets an object without ``additionalProperties`` hold any other key, and a grammar built from it
    lets the model write them; a small model then copies the schema itself into its arguments and runs to
    ``max_tokens`` (found with instructor's default tools mode: 64 tokens of invented keys). A function reads only the
    keys it declares, so the grammar admits only those. ``required`` is kept as given (strict mode would require every
    key; a non-strict tool may leave optional ones out); an object with no ``properties`` stays open (free-form)."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: (value if key in ("const", "enum", "default", "examples") else
                    {name: closed_objects(sub) for name, sub in value.items()} if key in ("properties", "$defs", "definitions", "patternProperties")
                    else closed_objects(value)) for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema and "patternProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


def tool_call_schemas(functions: list[dict[str, Any]], only: str | None, calls: CallFormat = PROJECT_CALLS) -> list[dict[str, Any]]:
    """One JSON schema per function that may be called (``only`` that one): the call's object in the format ``calls``,
    ``{"name": ..., "arguments": {...}}`` (or the template's keys), the arguments valid against its ``parameters``
    (closed to keys it does not declare: ``closed_objects``)."""
    return [{"type": "object", "properties": {calls.name_key: {"const": f["name"]},
                                              calls.arguments_key: closed_objects(f.get("parameters") or {"type": "object"})},
             "required": [calls.name_key, calls.arguments_key], "additionalProperties": False}
            for f in functions if only is None or f["name"] == only]


def compile_lark(lark: str, param: str) -> str:
    """``lark`` (calls in a model's format, their arguments as JSON schemas), checked: a RequestError naming ``param``
    when llguidance cannot follow it."""
    import llguidance

    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(llguidance.LLMatcher.grammar_from_lark(lark))
    if failed:
        raise RequestError(f"The local server cannot follow this JSON schema: {'; '.join(messages)}.", param,
                           code="invalid_json_schema")
    return lark


def compile_grammar(schema: dict[str, Any], param: str) -> str:
    """A grammar for JSON valid against ``schema``, written as the local models write JSON (``JSON_FORMAT``)."""
    return compile_lark(f"start: %json {json.dumps({**schema, 'x-guidance': JSON_FORMAT})}", param)


def read_tool_calls(text: str, functions: list[dict[str, Any]], calls: CallFormat = PROJECT_CALLS
                    ) -> tuple[str | None, list[dict[str, Any]]]:
    """Split an answer into its text and its tool calls (written in the format ``calls``) in OpenAI's shape (arguments
    as a JSON string, a fresh id each). An answer with no well-formed call of a known function is all text."""
    found = calls.read(text, {f["name"] for f in functions})
    if not found:
        return text, []
    before, read = found
    shaped = [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
               "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}
              for name, arguments in read]
    return before or None, shaped


def read_cut_tool_calls(text: str, functions: list[dict[str, Any]], calls: CallFormat = PROJECT_CALLS
                        ) -> tuple[str | None, list[dict[str, Any]]] | None:
    """Tool calls cut off by ``max_tokens``, in OpenAI's shape (the last call's arguments cut short, as OpenAI returns
    them with finish reason "length"); None when ``text`` holds no calls."""
    found = calls.read_cut(text, {f["name"] for f in functions})
    if found is None:
        return None
    before, read = found
    return before or None, [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
                             "function": {"name": name, "arguments": arguments}} for name, arguments in read]


class Constraint:
    """One sequence's grammar: which tokens may come next, and the tokens it has taken."""

    def __init__(self, tokenizer, grammar: str) -> None:
        import llguidance

        ll_tokenizer = _ll_tokenizer(tokenizer)
        self.matcher = llguidance.LLMatcher(ll_tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
        self.vocab = ll_tokenizer.vocab_size

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (one row) with every token the grammar forbids at -inf."""
        import llguidance.torch as llt

        allowed = llt.allocate_token_bitmask(1, self.vocab)
        llt.fill_next_token_bitmask(self.matcher, allowed, 0)
        masked = logits.clone()
        llt.apply_token_bitmask_inplace(masked[None, : self.vocab], allowed)
        masked[self.vocab:] = float("-inf")
        return masked

    def take(self, token: int) -> None:
        if not self.matcher.is_stopped():
            self.matcher.consume_token(token)


_LL_TOKENIZERS: dict[int, Any] = {}


def _ll_tokenizer(tokenizer):
    """llguidance's view of a transformers tokenizer (built once per tokenizer: about 0.3 s)."""
    import llguidance.hf

    key = id(tokenizer)
    if key not in _LL_TOKENIZERS:
        _LL_TOKENIZERS[key] = (tokenizer, llguidance.hf.from_tokenizer(tokenizer))
    return _LL_TOKENIZERS[key][1]


class GrammarLogitsProcessor:
    """For ``model.generate``: each row of the batch follows its own copy of one grammar."""

    def __init__(self, tokenizer, grammar: str, prompt_width: int) -> None:
        self.tokenizer, self.grammar, self.width = tokenizer, grammar, prompt_width
        self.rows: list[Constraint] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            self.rows = [Constraint(self.tokenizer, self.grammar) for _ in range(input_ids.shape[0])]
        elif input_ids.shape[1] > self.width:
            for row, token in zip(self.rows, input_ids[:, -1].tolist()):
                row.take(token)
        return torch.stack([row.mask(scores[i]) for i, row in enumerate(self.rows)])
