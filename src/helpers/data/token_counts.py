"""How many tokens an example costs, by OpenAI's chat recipe, extended to tools.

The recipe (OpenAI Cookbook, "How to count tokens with tiktoken"), applied to every example:

* each message costs ``TOKENS_PER_MESSAGE`` (3) plus the tokens of its ``role`` and of its ``content``
  (every text part of a list content; image parts are not counted);
* a ``name`` costs its tokens plus ``TOKENS_PER_NAME`` (1);
* each example adds ``REPLY_PRIMER`` (3) for the ``<|start|>assistant<|message|>`` that primes a reply;
* an assistant's tool call (or legacy ``function_call``) costs ``TOKENS_PER_MESSAGE`` plus the tokens of
  the function name and of the ``arguments`` string; ``tool_call_id`` and ``weight`` are metadata and cost
  nothing;
* tool definitions (``tools`` or legacy ``functions``) cost what the Cookbook's ``num_tokens_for_tools``
  gives for GPT-4o-class models: 7 per function, the tokens of ``"name:description"``, 3 to open the
  properties, per property 3 plus the tokens of ``"key:type:description"`` (enums: -3, then 3 plus the tokens
  of each value), and 12 once at the end;
* a preference (DPO) example costs its input (recipe above, with the primer) plus each output message.

"Assistant tokens" are the tokens the model is trained to produce: the content and tool-call text of the
assistant messages with weight 1 (for DPO, of both outputs), without per-message overhead, as in the
Cookbook. Text is encoded with ``encode_ordinary``: special-token strings in data count as plain text.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tiktoken

from helpers.data.chat_format import CHAT, PROMPT

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER = 3
FUNC_INIT = 7
PROP_INIT = 3
PROP_KEY = 3
ENUM_INIT = -3
ENUM_ITEM = 3
FUNC_END = 12


@dataclass(frozen=True, slots=True)
class TokenParts:
    """An example split into a fixed overhead and texts still to encode (``trained[i]`` marks text the
    model learns to produce)."""

    overhead: int
    texts: list[str]
    trained: list[bool]


def tool_definition_tokens(definitions: list[dict[str, Any]], count: Callable[[str], int], *, wrapped: bool = True) -> int:
    """Tokens of a ``tools`` list (``wrapped``) or a legacy ``functions`` list, by the Cookbook recipe."""
    if not definitions:
        return 0
    total = 0
    for entry in definitions:
        function = entry.get("function", {}) if wrapped else entry
        description = str(function.get("description", "")).removesuffix(".")
        total += FUNC_INIT + count(f"{function.get('name', '')}:{description}")
        properties = (function.get("parameters") or {}).get("properties") or {}
        if properties:
            total += PROP_INIT
            for key, spec in properties.items():
                spec = spec if isinstance(spec, dict) else {}
                total += PROP_KEY
                if isinstance(spec.get("enum"), list):
                    total += ENUM_INIT
                    for item in spec["enum"]:
                        total += ENUM_ITEM + count(str(item))
                kind = spec.get("type", "")
                kind = ",".join(kind) if isinstance(kind, list) else str(kind)
                description = str(spec.get("description", "")).removesuffix(".")
                total += count(f"{key}:{kind}:{description}")
    return total + FUNC_END


def _message_parts(message: dict[str, Any], role_tokens: dict[str, int], texts: list[str], trained: list[bool]) -> int:
    role = message["role"]
    learn = role == "assistant" and message.get("weight", 1) == 1
    overhead = TOKENS_PER_MESSAGE + role_tokens[role]
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
        trained.append(learn)
    elif isinstance(content, list):
        for part in content:
            if part.get("type") == "text":
                texts.append(part["text"])
                trained.append(learn)
    if "name" in message:
        overhead += TOKENS_PER_NAME
        texts.append(message["name"])
        trained.append(False)
    calls = message.get("tool_calls") or []
    if message.get("function_call") is not None:
        calls = [*calls, {"function": message["function_call"]}]
    for call in calls:
        overhead += TOKENS_PER_MESSAGE
        texts.append(call["function"]["name"])
        texts.append(call["function"]["arguments"])
        trained.extend((learn, learn))
    return overhead


def role_token_table(encoding: tiktoken.Encoding) -> dict[str, int]:
    """Tokens of each role name (constant per encoding, so computed once)."""
    return {role: len(encoding.encode_ordinary(role)) for role in ("system", "user", "assistant", "tool", "function")}


def token_parts(example: dict[str, Any], fmt: str, role_tokens: dict[str, int], tools_tokens: Callable[[dict[str, Any]], int]) -> TokenParts:
    """Split a *valid* example into overhead and texts (``tools_tokens`` counts an object's tool defs)."""
    texts: list[str] = []
    trained: list[bool] = []
    if fmt in (CHAT, PROMPT):  # a prompt's messages are counted as a chat's (none of them is trained)
        overhead = REPLY_PRIMER + tools_tokens(example)
        for message in example["messages"]:
            overhead += _message_parts(message, role_tokens, texts, trained)
        return TokenParts(overhead, texts, trained)
    source = example["input"]
    overhead = REPLY_PRIMER + tools_tokens(source)
    for message in source["messages"]:
        overhead += _message_parts(message, role_tokens, texts, [])
    trained = [False] * len(texts)
    for key in ("preferred_output", "non_preferred_output"):
        for message in example[key]:
            overhead += _message_parts({**message, "weight": 1}, role_tokens, texts, trained)
    return TokenParts(overhead, texts, trained)


class ToolTokenCache:
    """Counts tool definitions, remembering the few distinct lists a file repeats (bounded)."""

    MAX_ENTRIES = 1024

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._count = lambda text: len(encoding.encode_ordinary(text))
        self._cache: dict[str, int] = {}

    def __call__(self, holder: dict[str, Any]) -> int:
        tools, functions = holder.get("tools"), holder.get("functions")
        if not tools and not functions:
            return 0
        key = json.dumps([tools, functions], sort_keys=True)
        cached = self._cache.get(key)
        if cached is None:
            cached = tool_definition_tokens(tools or [], self._count) + tool_definition_tokens(functions or [], self._count, wrapped=False)
            if len(self._cache) < self.MAX_ENTRIES:
                self._cache[key] = cached
        return cached


@dataclass(frozen=True, slots=True)
class ExampleTokens:
    total: int
    assistant: int


def count_example_tokens(example: dict[str, Any], encoding: tiktoken.Encoding, fmt: str = CHAT) -> ExampleTokens:
    """Tokens of one valid example by the recipe above (total, and assistant tokens trained on)."""
    parts = token_parts(example, fmt, role_token_table(encoding), ToolTokenCache(encoding))
    lengths = [len(encoding.encode_ordinary(text)) for text in parts.texts]
    return ExampleTokens(
        total=parts.overhead + sum(lengths),
        assistant=sum(n for n, learn in zip(lengths, parts.trained) if learn),
    )
