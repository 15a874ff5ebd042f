"""How a local model sees a conversation: messages (and tool calls) as text in its chat template, and which tokens
a training example teaches. Training and answering both use these, so a fine-tuned model sees at answer time
what it was trained on. No torch here: the routes use it too."""
from __future__ import annotations

import json
from typing import Any

#: The label of a token that is not learned (the prompt, padding).
IGNORE = -100

TOOL_CALLS_PREFIX = '{"tool_calls": '  # how a local model writes tool calls: one JSON line, after any text


def tool_calls_text(calls: list[dict[str, Any]]) -> str:
    """Tool calls as the local model writes them: ``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` (the
    arguments as JSON, not as the string OpenAI's messages carry, so a grammar can constrain them)."""
    def arguments(text: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            return text
    return json.dumps({"tool_calls": [{"name": c["function"]["name"], "arguments": arguments(c["function"]["arguments"])} for c in calls]})


def message_text(message: dict[str, Any]) -> str:
    """A message's content as the text the local model sees (tool calls as one JSON line after the text)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
    calls = message.get("tool_calls") or ([{"function": message["function_call"]}] if message.get("function_call") else None)
    if calls:
        rendered = tool_calls_text(calls)
        content = f"{content}\n{rendered}" if content else rendered
    return content or ""


def functions_of(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The function definitions of ``tools`` (``{"type": "function", "function": {...}}``) or of legacy ``functions``."""
    return [t.get("function", t) for t in tools or []]


def with_tools(messages: list[dict[str, Any]], functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as a local model sees it when it may call ``functions``: their definitions, and how to call
    one, at the end of the system message (a system message is added if there is none). Training and answering
    both use this, so a model fine-tuned on examples with ``tools`` sees at answer time what it was trained on."""
    if not functions:
        return messages
    listing = "\n".join(json.dumps({k: f[k] for k in ("name", "description", "parameters") if k in f}) for f in functions)
    block = (f"You can call these functions:\n{listing}\nTo call one or more, answer with one line: "
             f'{TOOL_CALLS_PREFIX}[{{"name": ..., "arguments": {{...}}}}]}}')
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": f"{message_text(first)}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": message_text(m)} for m in messages]


def render(tokenizer, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(plain_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_chat(tokenizer, messages: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None) -> tuple[list[int], list[int]]:
    """Token ids and labels: assistant content (weight 1) and its closing ``<|im_end|>`` are learned. With
    ``functions`` (an example's tools), the prompt shows them as an answer's prompt does (``with_tools``)."""
    messages = with_tools(messages, functions or [])
    text = render(tokenizer, messages)
    end_token = tokenizer.eos_token  # "<|im_end|>" for ChatML models
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        block = f"<|im_start|>assistant\n{message_text(message)}{end_token}"
        start = text.find(block, len(render(tokenizer, messages[:i])) if i else 0)
        if start < cursor:
            raise ValueError("could not locate an assistant message in the rendered chat template")
        cursor = start + len(block)
        if message.get("weight", 1) == 1:
            spans.append((start + len("<|im_start|>assistant\n"), cursor))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [tok if any(s <= a < e for s, e in spans) else IGNORE for tok, (a, _) in zip(ids, encoded["offset_mapping"])]
    return ids, labels


def encode_preference(tokenizer, example: dict[str, Any]) -> dict[str, list[int]]:
    """Prompt ids, and completion ids for the preferred and the other output (each ends with eos)."""
    source = example["input"]
    messages = with_tools(source["messages"], functions_of(source.get("tools") or source.get("functions")))
    prompt = render(tokenizer, messages, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = {"prompt": prompt_ids}
    for key, name in (("preferred_output", "chosen"), ("non_preferred_output", "rejected")):
        text = message_text(example[key][0]) + tokenizer.eos_token
        out[name] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return out
