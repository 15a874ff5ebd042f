"""How a local model sees a conversation: messages (and tool calls) as text in the model's own chat template, and
which tokens a training example teaches. Training and answering both use these, so a fine-tuned model sees at answer
time what it was trained on. No torch here: the routes use it too.

Nothing here knows any model's markers. Which characters are an assistant's turn comes from the template itself:
where the template marks them (``{% generation %}`` ... ``{% endgeneration %}``, as TRL's assistant-only loss reads
them), those; elsewhere, what rendering the turn adds to the conversation before it with the generation prompt. The
turn is learned up to and including its first end-of-turn token (the model's eos ids, all of them: generation_config
may list several), so the model learns to stop; what a template writes after it (a newline) is not learned.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, cast

#: The label of a token that is not learned (the prompt, padding).
IGNORE = -100

TOOL_CALLS_PREFIX = '{"tool_calls": '  # how a local model writes tool calls: one JSON line, after any text
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateProblem(ValueError):
    """A chat template the server cannot train with (no template, no end-of-turn token, turns it cannot locate)."""


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


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Role, text and (on assistant messages) training weight; ``developer`` is the system role of newer OpenAI models."""
    plain = []
    for m in messages:
        message: dict[str, Any] = {"role": "system" if m["role"] == "developer" else m["role"], "content": message_text(m)}
        if m["role"] == "assistant":
            message["weight"] = m.get("weight", 1)
        plain.append(message)
    return plain


class ChatTemplate:
    """One model's chat template: how it renders a conversation, and which tokens of it a training example teaches.

    ``stop_ids``: the model's end-of-turn / end-of-text token ids (``localmodels.stop_token_ids``). Made with
    :meth:`of`, which checks the template once (a TemplateProblem says what is wrong)."""

    def __init__(self, tokenizer, stop_ids: Iterable[int], *, folds_system: bool, marked: bool) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(stop_ids)
        #: the template refuses (or drops) a system message: it is put before the first user message's text, as
        #: Gemma's own later templates do with it
        self.folds_system = folds_system
        #: the template marks assistant turns with {% generation %}
        self.marked = marked

    @classmethod
    def of(cls, tokenizer, stop_ids: Iterable[int], model: str = "the model") -> ChatTemplate:
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str) or not template.strip():
            raise TemplateProblem(f"{model} has no chat template: its tokenizer (tokenizer_config.json 'chat_template', or "
                                  "chat_template.jinja) must say how a conversation is written, or the server cannot tell "
                                  "what to train. Add the template of the model's instruct version.")
        stop_ids = frozenset(i for i in stop_ids if i is not None)
        if not stop_ids:
            raise TemplateProblem(f"{model} names no end-of-turn token (eos_token_id in generation_config.json or the "
                                  "tokenizer's eos_token): a model must know when its answer ends.")
        probe = [{"role": "system", "content": "Sys-probe."}, {"role": "user", "content": "User-probe."}]
        try:
            folds = "Sys-probe." not in _apply(tokenizer, probe, add_generation_prompt=True)
        except Exception:  # noqa: BLE001  a template's raise_exception ("System role not supported") or its own error
            folds = True
        chat = cls(tokenizer, stop_ids, folds_system=folds, marked=bool(GENERATION_MARKER.search(template)))
        try:
            ids, labels = chat.encode_chat([*probe, {"role": "assistant", "content": "Answer-probe."},
                                            {"role": "user", "content": "Again."}, {"role": "assistant", "content": "Two."}])
        except TemplateProblem as exc:
            raise TemplateProblem(f"{model}: {exc}") from None
        except Exception as exc:  # noqa: BLE001  the template's own error
            raise TemplateProblem(f"{model}'s chat template cannot render a plain conversation: {exc}") from None
        learned = [i for i, label in zip(ids, labels) if label != IGNORE]
        if sum(1 for i in learned if i in chat.stop_ids) != 2:
            names = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(chat.stop_ids))
            raise TemplateProblem(f"{model}'s chat template does not close an assistant turn with an end-of-turn token "
                                  f"({names}): a model trained on it could not learn to stop.")
        return chat

    # -- rendering ------------------------------------------------------------------------------
    def conversation(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` as the template takes them: plain text, and a system message folded into the first user
        message when the template has no system role."""
        plain = plain_messages(messages)
        if not self.folds_system or not plain or plain[0]["role"] != "system":
            return plain
        system, rest = plain[0], plain[1:]
        if rest and rest[0]["role"] == "user":
            return [{**rest[0], "content": f"{system['content']}\n\n{rest[0]['content']}"}, *rest[1:]]
        return [{"role": "user", "content": system["content"]}, *rest]

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False) -> str:
        return _apply(self.tokenizer, self.conversation(messages), add_generation_prompt=add_generation_prompt)

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The token ids of a prompt that asks for the next assistant turn, cut into pieces where earlier assistant turns
        start and end, as a training example with these turns is (:meth:`encode_chat`)."""
        prompt = self.render(messages, add_generation_prompt=True)
        if not any(m["role"] == "assistant" for m in messages):
            return self._tokens(prompt)
        try:
            text, spans = self.assistant_spans(messages)
        except TemplateProblem:  # a template whose turns cannot be located: the prompt as one piece, as it is written
            return self._tokens(prompt)
        return self._pieces(prompt, spans)[0] if prompt.startswith(text) else self._tokens(prompt)

    # -- what a training example teaches ------------------------------------------------------
    def assistant_spans(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int, bool]]]:
        """The rendered conversation and, per assistant message, the characters of its turn and whether it is learned
        (weight 1). From the template's {% generation %} marks where it has them, else from what each turn adds."""
        conversation = self.conversation(messages)
        assistant = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
        learned = [conversation[i]["weight"] == 1 for i in assistant]
        if self.marked:
            from transformers.utils.chat_template_utils import render_jinja_template

            # typed as returning the text, it returns the texts and each one's generation blocks (start, end)
            rendered, indices = cast(tuple[list[str], list[list[tuple[int, int]]]], render_jinja_template(
                conversations=[conversation], chat_template=self.tokenizer.chat_template, return_assistant_tokens_mask=True,
                **self.tokenizer.special_tokens_map))
            if len(indices[0]) != len(assistant):
                raise TemplateProblem(f"the chat template marks {len(indices[0])} generation blocks for {len(assistant)} "
                                      "assistant messages.")
            return rendered[0], [(start, end, keep) for (start, end), keep in zip(indices[0], learned)]
        text = _apply(self.tokenizer, conversation)
        spans = []
        for i, keep in zip(assistant, learned):
            before = _apply(self.tokenizer, conversation[:i], add_generation_prompt=True)
            through = _apply(self.tokenizer, conversation[: i + 1])
            if not through.startswith(before) or not text.startswith(through):
                raise TemplateProblem("the chat template writes an assistant turn differently once more messages follow, "
                                      "so its turns cannot be located in a conversation; add {% generation %} marks to it.")
            spans.append((len(before), len(through), keep))
        return text, spans

    def encode_chat(self, messages: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None) -> tuple[list[int], list[int]]:
        """Token ids and labels: each learned assistant turn's tokens through its end-of-turn token; nothing else.
        With ``functions`` (an example's tools), the prompt shows them as an answer's prompt does (``with_tools``).

        The text is tokenized in pieces cut where each assistant turn starts and ends, as a prompt is (``prompt_ids``), so
        the tokens before a turn are those the model gets when it answers (tokenized together, a tokenizer may join a
        prompt's closing newlines with the answer's first letters: Llama 3's template ends its prompt with two)."""
        return self._pieces(*self.assistant_spans(with_tools(messages, functions or [])))

    def _pieces(self, text: str, spans: list[tuple[int, int, bool]]) -> tuple[list[int], list[int]]:
        """``text`` tokenized piece by piece, cut where each assistant turn (``spans``) starts and ends, and the labels."""
        ids: list[int] = []
        labels: list[int] = []
        cursor = 0
        for start, end, keep in spans:
            if not self.marked:  # the turn ends with its first end-of-turn token; what follows belongs to the next prompt
                block = self.tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True)
                stop = next((i for i, t in enumerate(block["input_ids"]) if t in self.stop_ids), None)
                end = start + block["offset_mapping"][stop][1] if stop is not None else end
            before, turn = self._tokens(text[cursor:start]), self._tokens(text[start:end])
            ids += before + turn
            labels += [IGNORE] * len(before) + (turn if keep else [IGNORE] * len(turn))
            cursor = end
        tail = self._tokens(text[cursor:])
        return ids + tail, labels + [IGNORE] * len(tail)

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def encode_preference(self, example: dict[str, Any]) -> dict[str, list[int]]:
        """Prompt ids, and completion ids for the preferred and the other output (each the turn's learned tokens, so
        each ends with the end-of-turn token)."""
        source = example["input"]
        messages = with_tools(source["messages"], functions_of(source.get("tools") or source.get("functions")))
        out = {"prompt": self.prompt_ids(messages)}
        for key, name in (("preferred_output", "chosen"), ("non_preferred_output", "rejected")):
            ids, labels = self.encode_chat([*messages, {"role": "assistant", "content": message_text(example[key][0])}])
            out[name] = [i for i, label in zip(ids, labels) if label != IGNORE]
        return out


def _apply(tokenizer, conversation: list[dict[str, Any]], *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
