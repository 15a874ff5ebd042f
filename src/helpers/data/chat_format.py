"""The rules of OpenAI's fine-tuning file formats, checked one example at a time.

This module is the workbook's one source of truth for the chat-format rules. Two formats exist:

* **supervised chat**: ``{"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool,
  "functions"?: [...]}`` (``functions`` is the legacy form of ``tools``);
* **preference (DPO)**: ``{"input": {"messages": [...], "tools"?: [...]}, "preferred_output": [msg],
  "non_preferred_output": [msg]}``.

Rules (each broken rule is an :class:`Issue` with a stable ``code`` and a message that says what to
change):

* roles are ``system``, ``user``, ``assistant``, ``tool`` or ``function``;
* ``content`` is a string or a list of content parts (``{"type": "text", "text": ...}``; user messages may
  also carry ``image_url`` parts); an assistant's content may be ``null`` when it makes tool calls;
* assistant ``tool_calls`` are a non-empty list of ``{"id", "type": "function", "function": {"name",
  "arguments"}}`` where ``arguments`` is a string holding JSON; a ``tool`` message answers one of them
  through ``tool_call_id``;
* ``name`` matches ``^[a-zA-Z0-9_-]{1,64}$``;
* ``weight`` is 0 or 1 and only appears on assistant messages;
* every supervised example has at least one assistant message.

Unlike the OpenAI Cookbook's checker, valid ``tool_calls``/``tool`` data and the ``weight`` key are
accepted here (tests/test_validator.py keeps those as regression cases).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

CHAT = "chat"
PREFERENCE = "preference"
#: reinforcement fine-tuning's: a conversation that ends with the user's turn (the model answers it, a grader scores the
#: answer), and any other fields, which the grader reads as ``item`` (a reference answer, for example)
PROMPT = "prompt"

ROLES = ("system", "user", "assistant", "tool", "function")
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# -- the one rule for text ------------------------------------------------------------------------
# Every string that enters the workbook (a file's examples, a request's messages, metadata, names) must be text: Unicode
# scalar values, no NUL, no noncharacter U+FFFE / U+FFFF. A lone surrogate escape ("\ud800") is valid JSON but not
# text (it cannot be written as UTF-8), so it is refused where it enters, with the place it was found.
NOT_TEXT = re.compile("[\x00\ud800-\udfff\ufffe\uffff]")
MAX_JSON_DEPTH = 64  # nesting deeper than this is refused (no example or request needs it)


def _describe(char: str) -> str:
    if char == "\x00":
        return "a NUL character (\\u0000)"
    if "\ud800" <= char <= "\udfff":
        return f"a lone surrogate (\\u{ord(char):04x}, half of a UTF-16 pair: valid JSON but not text)"
    return f"the noncharacter U+{ord(char):04X}"


def text_problem(value: Any, where: str = "") -> tuple[str, str, str] | None:
    """Where ``value`` (parsed JSON) first breaks the text rule or nests deeper than MAX_JSON_DEPTH: (a path like
    ``messages[1].content``, what is there, a stable code: ``invalid_text`` or ``invalid_json``), or None. Keys are
    checked as well as values."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return path or "the top level", f"JSON nested more than {MAX_JSON_DEPTH} levels deep", "invalid_json"
        if isinstance(item, str):
            bad = NOT_TEXT.search(item)
            if bad:
                return path or "the top level", f"{_describe(bad.group())} at character {bad.start() + 1}", "invalid_text"
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                bad = NOT_TEXT.search(key)
                if bad:
                    return path or "the top level", f"a key holds {_describe(bad.group())}", "invalid_text"
                stack.append((child, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in reversed(list(enumerate(item))))
    return None


#: Keys each role may carry (anything else is an error: OpenAI rejects unknown message keys).
MESSAGE_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "function_call", "weight"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
PREFERENCE_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})


@dataclass(frozen=True, slots=True)
class Issue:
    """One broken rule: a stable machine-readable ``code`` and a message that says what to change."""

    code: str
    message: str


def detect_format(example: dict[str, Any]) -> str | None:
    """``"chat"``, ``"preference"``, ``"prompt"`` or ``None`` when the object matches none of them. A conversation that
    ends with the user's turn and has no assistant message is a prompt (a file's first example decides the file's
    format: a chat file's example without its reply is checked as chat, and told what it lacks)."""
    if "messages" in example:
        messages = example["messages"]
        if (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)
                and messages[-1].get("role") == "user" and not any(m.get("role") == "assistant" for m in messages)):
            return PROMPT
        return CHAT
    if "input" in example or "preferred_output" in example or "non_preferred_output" in example:
        return PREFERENCE
    return None


def _where(index: int, role: Any) -> str:
    return f"message {index + 1} ({role})" if isinstance(role, str) else f"message {index + 1}"


def _check_content_parts(parts: list[Any], where: str, role: str, errors: list[Issue]) -> None:
    if not parts:
        errors.append(Issue("invalid_content", f"{where}: 'content' is an empty list. Give a string or at least one text part."))
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            errors.append(Issue("invalid_content_part", f"{where}: content part {j + 1} must be an object like {{\"type\": \"text\", \"text\": \"...\"}}."))
            continue
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                errors.append(Issue("invalid_content_part", f"{where}: content part {j + 1} has type 'text' but no string 'text' field."))
        elif kind == "image_url" and role == "user":
            url = part.get("image_url")
            if not (isinstance(url, dict) and isinstance(url.get("url"), str)):
                errors.append(Issue("invalid_content_part", f"{where}: content part {j + 1} needs \"image_url\": {{\"url\": \"...\"}}."))
        else:
            allowed = "'text' or 'image_url'" if role == "user" else "'text'"
            errors.append(Issue("invalid_content_part", f"{where}: content part {j + 1} has type {kind!r}; use {allowed}."))


def _check_arguments(arguments: Any, where: str, errors: list[Issue]) -> None:
    if not isinstance(arguments, str):
        errors.append(Issue("invalid_tool_call", f"{where}: 'arguments' must be a string holding JSON (for example \"{{\\\"city\\\": \\\"Paris\\\"}}\"), not {type(arguments).__name__}."))
        return
    try:
        json.loads(arguments)
    except ValueError:
        errors.append(Issue("invalid_tool_call", f"{where}: 'arguments' is not valid JSON: {arguments[:60]!r}. Write the arguments as a JSON object in a string."))


def _check_tool_calls(calls: Any, where: str, errors: list[Issue], call_ids: set[str]) -> None:
    if not isinstance(calls, list) or not calls:
        errors.append(Issue("invalid_tool_call", f"{where}: 'tool_calls' must be a non-empty list of tool calls."))
        return
    for j, call in enumerate(calls):
        here = f"{where}, tool call {j + 1}"
        if not isinstance(call, dict):
            errors.append(Issue("invalid_tool_call", f"{here}: must be an object with 'id', 'type' and 'function'."))
            continue
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            errors.append(Issue("invalid_tool_call", f"{here}: needs a non-empty string 'id' (the tool message answers it with 'tool_call_id')."))
        else:
            call_ids.add(call_id)
        if call.get("type") != "function":
            errors.append(Issue("invalid_tool_call", f"{here}: 'type' must be \"function\", got {call.get('type')!r}."))
        function = call.get("function")
        if not isinstance(function, dict):
            errors.append(Issue("invalid_tool_call", f"{here}: needs a 'function' object with 'name' and 'arguments'."))
            continue
        name = function.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            errors.append(Issue("invalid_tool_call", f"{here}: function 'name' must match [a-zA-Z0-9_-]{{1,64}}, got {name!r}."))
        _check_arguments(function.get("arguments"), here, errors)


def _check_content(message: dict[str, Any], role: str, where: str, errors: list[Issue], warnings: list[Issue]) -> None:
    """A message's content: text, a list of text parts, or null on an assistant message that calls tools."""
    content = message.get("content")
    calls = message.get("tool_calls")
    function_call = message.get("function_call")
    if content is None:
        if role == "assistant" and (calls is not None or function_call is not None):
            pass  # content may be null when the assistant calls tools
        elif "content" in message:
            errors.append(Issue("missing_content", f"{where}: 'content' is null. Give the message text (null is only allowed on an assistant message with tool_calls)."))
        else:
            errors.append(Issue("missing_content", f"{where}: no 'content'. Add the message text."))
    elif type(content) is str:
        if (not content or content.isspace()) and role in ("user", "assistant") and calls is None:
            warnings.append(Issue("empty_content", f"{where}: 'content' is empty or only white space."))
    elif isinstance(content, list):
        _check_content_parts(content, where, role, errors)
    else:
        errors.append(Issue("invalid_content", f"{where}: 'content' must be a string or a list of text parts, not {type(content).__name__}."))


def _check_assistant(message: dict[str, Any], where: str, errors: list[Issue], counts: dict[str, int], call_ids: set[str]) -> None:
    """An assistant message's tool calls, legacy function call and weight (counted in ``weighted_assistant``)."""
    calls = message.get("tool_calls")
    function_call = message.get("function_call")
    if calls is not None:
        _check_tool_calls(calls, where, errors, call_ids)
    if function_call is not None:
        if not isinstance(function_call, dict) or not isinstance(function_call.get("name"), str):
            errors.append(Issue("invalid_function_call", f"{where}: 'function_call' must be an object with 'name' and 'arguments'."))
        else:
            _check_arguments(function_call.get("arguments"), f"{where}, function_call", errors)
    if "weight" in message:
        weight = message["weight"]
        if isinstance(weight, bool) or weight not in (0, 1):
            errors.append(Issue("invalid_weight", f"{where}: 'weight' must be 0 (do not train on this message) or 1 (train on it), got {weight!r}."))
        elif weight == 1:
            counts["weighted_assistant"] += 1
    else:
        counts["weighted_assistant"] += 1


def check_messages(messages: Any, errors: list[Issue], warnings: list[Issue], *, context: str = "") -> dict[str, int]:
    """Check a list of messages; return counts by role (``weighted_assistant`` counts weight 1)."""
    counts = {"system": 0, "user": 0, "assistant": 0, "tool": 0, "function": 0, "weighted_assistant": 0}
    prefix = f"{context}: " if context else ""
    if not isinstance(messages, list):
        errors.append(Issue("invalid_messages", f"{prefix}'messages' must be a list of message objects, not {type(messages).__name__}."))
        return counts
    if not messages:
        errors.append(Issue("invalid_messages", f"{prefix}'messages' is empty. Add the conversation: system, user and assistant messages."))
        return counts
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            errors.append(Issue("invalid_message", f"{prefix}message {i + 1} must be an object with 'role' and 'content'."))
            continue
        role = message.get("role")
        if not isinstance(role, str) or role not in MESSAGE_KEYS:
            hint = " Use 'system' for instructions." if role == "developer" else ""
            errors.append(Issue("invalid_role", f"{prefix}{_where(i, role)}: 'role' must be one of {', '.join(ROLES)}; got {role!r}.{hint}"))
            continue
        allowed = MESSAGE_KEYS[role]
        where = f"{prefix}message {i + 1} ({role})"
        counts[role] += 1
        if not allowed.issuperset(message):
            for key in message:
                if key not in allowed:
                    if key == "weight":
                        errors.append(Issue("weight_not_allowed", f"{where}: 'weight' is only allowed on assistant messages. Remove it."))
                    else:
                        keys = ", ".join(sorted(allowed))
                        errors.append(Issue("unexpected_message_key", f"{where}: unknown key {key!r}. Allowed keys on a {role} message: {keys}."))
        if "name" in message and not (isinstance(message["name"], str) and NAME_PATTERN.match(message["name"])):
            errors.append(Issue("invalid_name", f"{where}: 'name' must match [a-zA-Z0-9_-]{{1,64}} (no spaces), got {message['name']!r}."))
        if role == "function" and "name" not in message:
            errors.append(Issue("invalid_name", f"{where}: a function message needs the 'name' of the function it answers."))
        _check_content(message, role, where, errors, warnings)
        if role == "assistant":
            _check_assistant(message, where, errors, counts, call_ids)
        elif role == "tool":
            tool_call_id = message.get("tool_call_id")
            if not isinstance(tool_call_id, str) or not tool_call_id:
                errors.append(Issue("invalid_tool_message", f"{where}: a tool message needs 'tool_call_id', the id of the assistant tool call it answers."))
            elif tool_call_id not in call_ids:
                errors.append(Issue("unknown_tool_call_id", f"{where}: 'tool_call_id' {tool_call_id!r} matches no earlier assistant tool call in this example."))
    return counts


def _check_tools(example: dict[str, Any], errors: list[Issue], prefix: str = "") -> None:
    tools = example.get("tools")
    functions = example.get("functions")
    if tools is not None and functions is not None:
        errors.append(Issue("tools_and_functions", f"{prefix}use either 'tools' or the legacy 'functions', not both."))
    for key, entries in (("tools", tools), ("functions", functions)):
        if entries is None:
            continue
        if not isinstance(entries, list):
            errors.append(Issue("invalid_tools", f"{prefix}'{key}' must be a list."))
            continue
        for j, entry in enumerate(entries):
            definition = entry.get("function") if key == "tools" and isinstance(entry, dict) else entry
            if key == "tools" and (not isinstance(entry, dict) or entry.get("type") != "function"):
                errors.append(Issue("invalid_tools", f"{prefix}tools[{j}] must be {{\"type\": \"function\", \"function\": {{...}}}}."))
                continue
            if not isinstance(definition, dict) or not isinstance(definition.get("name"), str) or not NAME_PATTERN.match(definition["name"]):
                errors.append(Issue("invalid_tools", f"{prefix}{key}[{j}] needs a function 'name' matching [a-zA-Z0-9_-]{{1,64}}."))
                continue
            parameters = definition.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                errors.append(Issue("invalid_tools", f"{prefix}{key}[{j}] ('{definition['name']}'): 'parameters' must be a JSON Schema object."))
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        errors.append(Issue("invalid_parallel_tool_calls", f"{prefix}'parallel_tool_calls' must be true or false."))


def check_chat_example(example: dict[str, Any]) -> tuple[list[Issue], list[Issue], dict[str, int]]:
    """Check one supervised chat example; return (errors, warnings, role counts)."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    for key in example:
        if key not in CHAT_KEYS:
            warnings.append(Issue("unexpected_key", f"unknown top-level key {key!r} is ignored; a chat example has: {', '.join(sorted(CHAT_KEYS))}."))
    counts = check_messages(example.get("messages"), errors, warnings)
    _check_tools(example, errors)
    messages = example.get("messages")
    if isinstance(messages, list) and messages:
        if counts["assistant"] == 0:
            errors.append(Issue("no_assistant_message", "the example has no assistant message, so there is nothing to learn. Add the reply you want the model to give."))
        elif counts["weighted_assistant"] == 0 and not errors:
            warnings.append(Issue("no_trained_message", "every assistant message has weight 0, so this example trains nothing."))
    return errors, warnings, counts


def _check_output(output: Any, key: str, errors: list[Issue]) -> None:
    if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
        errors.append(Issue("invalid_output", f"'{key}' must be a list holding exactly one assistant message, like [{{\"role\": \"assistant\", \"content\": \"...\"}}]."))
        return
    if output[0].get("role") != "assistant":
        errors.append(Issue("invalid_output", f"'{key}' message must have role 'assistant', got {output[0].get('role')!r}."))
        return
    check_messages(output, errors, [], context=key)


def check_prompt_example(example: dict[str, Any]) -> tuple[list[Issue], list[Issue], dict[str, int]]:
    """Check one reinforcement prompt: valid messages ending with the user's turn; every other field is the grader's."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    counts = check_messages(example.get("messages"), errors, warnings)
    _check_tools(example, errors)
    return errors, warnings, counts


def check_preference_example(example: dict[str, Any]) -> tuple[list[Issue], list[Issue], dict[str, int]]:
    """Check one preference (DPO) example; return (errors, warnings, role counts of the input)."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    for key in example:
        if key not in PREFERENCE_KEYS:
            warnings.append(Issue("unexpected_key", f"unknown top-level key {key!r} is ignored; a preference example has: {', '.join(sorted(PREFERENCE_KEYS))}."))
    for key in sorted(PREFERENCE_KEYS):
        if key not in example:
            errors.append(Issue("missing_key", f"a preference (DPO) example needs {key!r}."))
    counts: dict[str, int] = {role: 0 for role in ROLES}
    source = example.get("input")
    if "input" in example:
        if not isinstance(source, dict):
            errors.append(Issue("invalid_input", "'input' must be an object with 'messages' (and optional 'tools')."))
        else:
            for key in source:
                if key not in PREFERENCE_INPUT_KEYS:
                    warnings.append(Issue("unexpected_key", f"unknown key {key!r} in 'input' is ignored."))
            counts = check_messages(source.get("messages"), errors, warnings, context="input")
            _check_tools(source, errors, prefix="input: ")
            messages = source.get("messages")
            if isinstance(messages, list) and messages and isinstance(messages[-1], dict) and messages[-1].get("role") != "user":
                warnings.append(Issue("input_not_ending_with_user", "the input's last message is not from the user; the outputs should answer a user turn."))
    for key in ("preferred_output", "non_preferred_output"):
        if key in example:
            _check_output(example[key], key, errors)
    if not errors and example["preferred_output"] == example["non_preferred_output"]:
        warnings.append(Issue("identical_outputs", "preferred_output and non_preferred_output are identical, so the pair teaches nothing."))
    return errors, warnings, counts
