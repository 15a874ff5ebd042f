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
from dataclasses import dataclass
from typing import Any, cast

#: The label of a token that is not learned (the prompt, padding).
IGNORE = -100

TOOL_CALLS_PREFIX = '{"tool_calls": '  # how a model whose template has no tools writes calls: one JSON line, after any text
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateProblem(ValueError):
    """A chat template the server cannot train with (no template, no end-of-turn token, turns it cannot locate)."""


@dataclass(frozen=True)
class CallFormat:
    """How a model writes tool calls: ``opening``, the calls (each one JSON object ``{name_key: ..., arguments_key:
    {...}}`` as ``json.dumps`` writes it) with ``separator`` between two, then ``closing``; at the start of the answer
    or of a line after its text.

    A template that renders ``tools`` and an assistant's ``tool_calls`` itself (Qwen 2.5's ``<tool_call>`` blocks, for
    one) has its own format, read from it by rendering a call (:func:`template_calls`); the model then sees the tools
    and writes calls as its authors trained it to. Any other template gets the project's format
    (``PROJECT_CALLS``): the functions listed at the end of the system message, calls as one JSON line."""

    opening: str
    #: between two calls; None where the template renders one call per turn (it refuses two)
    separator: str | None
    closing: str
    name_key: str = "name"
    arguments_key: str = "arguments"
    #: the template renders the tools and the calls (else the project lists them in the system message)
    native: bool = False

    def text(self, calls: list[dict[str, Any]]) -> str:
        """OpenAI-shaped ``tool_calls`` as this format writes them (arguments as JSON, not as the string OpenAI's
        messages carry, so a grammar can constrain them)."""
        objects = [json.dumps({self.name_key: c["function"]["name"], self.arguments_key: _arguments(c["function"]["arguments"])})
                   for c in calls]
        return self.opening + (self.separator or "").join(objects) + self.closing

    def read(self, text: str, names: set[str]) -> tuple[str, list[tuple[str, Any]]] | None:
        """The text before the calls and each call's (name, arguments), if ``text`` ends with well-formed calls of
        functions in ``names``; None otherwise (whitespace around the format's markers may differ)."""
        decoder = json.JSONDecoder()
        opening, separator, closing = (_loose(part) for part in (self.opening, self.separator or "\0", self.closing))
        for start in [0, *(m.end() for m in re.finditer("\n", text))]:
            found = opening.match(text, start)
            if found is None:
                continue
            at, calls = found.end(), []
            while True:
                try:
                    call, at = decoder.raw_decode(text, at)
                except ValueError:
                    break
                if not (isinstance(call, dict) and set(call) == {self.name_key, self.arguments_key}
                        and isinstance(call[self.name_key], str) and call[self.name_key] in names
                        and isinstance(call[self.arguments_key], (dict, str))):
                    break
                calls.append((call[self.name_key], call[self.arguments_key]))
                if self.separator is not None and (between := separator.match(text, at)):
                    at = between.end()
                    continue
                ending = closing.match(text, at)
                if ending is not None and not text[ending.end():].strip():
                    return text[:start].strip(), calls
                break
        return None

    def read_cut(self, text: str, names: set[str]) -> tuple[str, list[tuple[str, str]]] | None:
        """Calls cut off by ``max_tokens`` (the answer was made under this format's grammar, so it is a prefix of
        well-formed calls): the text before them and each call's (name, arguments as the JSON text written so far, the
        last one cut short), as OpenAI returns a call cut by the length limit. A name itself cut short is completed when
        one function's name begins so; None if ``text`` holds no opening of calls."""
        decoder = json.JSONDecoder()
        head = re.compile(r"\{" + re.escape(json.dumps(self.name_key)) + r':\s*"(?P<name>[^"]*)(?P<closed>")?'
                          r"(?:\s*,\s*" + re.escape(json.dumps(self.arguments_key)) + r":\s*(?P<arguments>.*))?", re.DOTALL)
        opening, separator = _loose(self.opening), _loose(self.separator or "\0")
        for start in [0, *(m.end() for m in re.finditer("\n", text))]:
            found = opening.match(text, start)
            if found is None:
                continue
            at, calls = found.end(), []
            while at < len(text):
                try:
                    call, at = decoder.raw_decode(text, at)
                except ValueError:
                    cut = head.match(text, at)
                    if cut is not None:
                        named = [cut["name"]] if cut["closed"] else [n for n in names if n.startswith(cut["name"])]
                        if len(named) == 1 and named[0] in names:
                            calls.append((named[0], cut["arguments"] or ""))
                    break
                if isinstance(call, dict) and isinstance(call.get(self.name_key), str) and call[self.name_key] in names:
                    arguments = call.get(self.arguments_key, {})
                    calls.append((call[self.name_key], arguments if isinstance(arguments, str) else json.dumps(arguments)))
                between = separator.match(text, at) if self.separator is not None else None
                if between is None:
                    break
                at = between.end()
            return text[:start].strip(), calls
        if text.strip() and self.opening.startswith(text.strip()):
            return "", []  # cut within the opening itself
        return None

    def grammar(self, call_schemas: list[dict[str, Any]], parallel: bool, json_format: dict[str, Any],
                answer_schema: dict[str, Any] | None = None) -> str:
        """A Lark grammar (llguidance's) for an answer that is one or more calls (one if not ``parallel``), each
        valid against one of ``call_schemas`` (a function's ``{name, arguments}`` object), JSON written as
        ``json_format`` says; with ``answer_schema``, the answer may instead be JSON valid against it."""
        def literal(part: str) -> str:
            return json.dumps(part) if part else ""

        def embedded(schema: dict[str, Any]) -> str:
            return f"%json {json.dumps({**schema, 'x-guidance': json_format})}"
        call = {"anyOf": call_schemas} if len(call_schemas) > 1 else call_schemas[0]
        more = f" ({literal(self.separator)} call)*" if parallel and self.separator is not None else ""
        rules = [f"calls: {literal(self.opening)} call{more} {literal(self.closing)}", f"call: {embedded(call)}"]
        if answer_schema is None:
            return "\n".join(["start: calls", *rules])
        return "\n".join(["start: calls | answer", *rules, f"answer: {embedded(answer_schema)}"])


#: The project's format, for templates that do not render tools: ``{"tool_calls": [{"name": ..., "arguments": ...}]}``
PROJECT_CALLS = CallFormat(opening=TOOL_CALLS_PREFIX + "[", separator=", ", closing="]}")


def _arguments(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


def _loose(part: str) -> re.Pattern[str]:
    """``part`` as a pattern that lets whitespace runs differ (a model may write one newline for two)."""
    pieces = [re.escape(piece) for piece in part.split()]
    return re.compile(r"\s*" + r"\s*".join(pieces) + (r"\s*" if pieces else ""))


def tool_calls_text(calls: list[dict[str, Any]]) -> str:
    """Tool calls in the project's format (:data:`PROJECT_CALLS`)."""
    return PROJECT_CALLS.text(calls)


def message_text(message: dict[str, Any], calls_as_text: bool = True) -> str:
    """A message's content as the text the model sees: its tool calls as one line after the text in the project's
    format, or not at all (``calls_as_text`` false: the template renders them)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
    found = message.get("tool_calls") or ([{"function": message["function_call"]}] if message.get("function_call") else None)
    if found and calls_as_text:
        rendered = tool_calls_text(found)
        content = f"{content}\n{rendered}" if content else rendered
    return content or ""


def functions_of(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The function definitions of ``tools`` (``{"type": "function", "function": {...}}``) or of legacy ``functions``."""
    return [t.get("function", t) for t in tools or []]


def with_tools(messages: list[dict[str, Any]], functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as a model whose template has no tools sees it when it may call ``functions``: their
    definitions, and how to call one, at the end of the system message (a system message is added if there is none).
    Training and answering both use this (through :class:`ChatTemplate`), so a model fine-tuned on examples with
    ``tools`` sees at answer time what it was trained on."""
    if not functions:
        return messages
    listing = "\n".join(json.dumps({k: f[k] for k in ("name", "description", "parameters") if k in f}) for f in functions)
    block = (f"You can call these functions:\n{listing}\nTo call one or more, answer with one line: "
             f'{TOOL_CALLS_PREFIX}[{{"name": ..., "arguments": {{...}}}}]}}')
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": f"{message_text(first)}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def plain_messages(messages: list[dict[str, Any]], native_calls: bool = False) -> list[dict[str, Any]]:
    """Role, text and (on assistant messages) training weight; ``developer`` is the system role of newer OpenAI models.
    With ``native_calls`` (a template that renders calls), an assistant's calls stay ``tool_calls`` (arguments as
    objects, as templates expect them) and a tool result keeps its call's id."""
    plain = []
    for m in messages:
        message: dict[str, Any] = {"role": "system" if m["role"] == "developer" else m["role"],
                                   "content": message_text(m, calls_as_text=not native_calls)}
        if m["role"] == "assistant":
            message["weight"] = m.get("weight", 1)
            if native_calls and m.get("tool_calls"):
                message["tool_calls"] = [{"type": "function", "id": c.get("id", f"call_{i}"), "function": {
                    "name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}}
                    for i, c in enumerate(m["tool_calls"])]
        if native_calls and m["role"] == "tool" and m.get("tool_call_id"):
            message["tool_call_id"] = m["tool_call_id"]
        plain.append(message)
    return plain


def template_calls(tokenizer, stop_ids: frozenset[int]) -> CallFormat:
    """The template's own tool-call format, read from it by rendering calls of a probe function: where the calls
    start and end in the assistant turn, the keys of a call's JSON, what comes between two calls. The project's format
    when the template does not render the tools it is given, or renders calls in a form this cannot read."""
    function = {"name": "probe_function", "description": "A probe.",
                "parameters": {"type": "object", "properties": {"probe_argument": {"type": "string"}}}}
    tools = [{"type": "function", "function": function}]
    user = [{"role": "user", "content": "User-probe."}]
    try:
        prompt = _apply(tokenizer, user, add_generation_prompt=True, tools=tools)
        if "probe_function" not in prompt or "probe_function" in _apply(tokenizer, user, add_generation_prompt=True):
            return PROJECT_CALLS
    except Exception:  # noqa: BLE001  a template that refuses tools, or its own error
        return PROJECT_CALLS
    stops = [tokenizer.decode([i]) for i in stop_ids]

    def turn(count: int) -> tuple[str, list[tuple[int, int, dict]]] | None:
        calls = [{"type": "function", "id": f"call_probe{i}", "function": {"name": "probe_function",
                                                                           "arguments": {"probe_argument": f"probe-value-{i}"}}}
                 for i in range(count)]
        try:
            text = _apply(tokenizer, [*user, {"role": "assistant", "content": "", "tool_calls": calls}], tools=tools)
        except Exception:  # noqa: BLE001  a template that renders one call per turn raises for two
            return None
        if not text.startswith(prompt):
            return None
        text = text[len(prompt):]
        end = min((text.find(stop) for stop in stops if stop and stop in text), default=-1)
        return (text[:end], _json_objects(text[:end])) if end >= 0 else None

    one, two = turn(1), turn(2)
    if one is None or len(one[1]) != 1:
        return PROJECT_CALLS
    text, [(start, end, call)] = one
    names = [k for k, v in call.items() if v == "probe_function"]
    arguments = [k for k, v in call.items() if v in ({"probe_argument": "probe-value-0"}, json.dumps({"probe_argument": "probe-value-0"}))]
    if len(call) != 2 or len(names) != 1 or len(arguments) != 1 or text[start:end] != json.dumps(call):
        return PROJECT_CALLS
    separator = None
    if two is not None and len(two[1]) == 2 and two[0].startswith(text[:start]) and two[0].endswith(text[end:]):
        separator = two[0][two[1][0][1]:two[1][1][0]]
    return CallFormat(opening=text[:start], separator=separator, closing=text[end:], name_key=names[0],
                      arguments_key=arguments[0], native=True)


def _json_objects(text: str) -> list[tuple[int, int, dict]]:
    """The JSON objects in ``text`` that are not inside another: (start, end, object)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (start := text.find("{", at)) >= 0:
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            at = start + 1
            continue
        if isinstance(value, dict):
            found.append((start, end, value))
        at = end
    return found


class ChatTemplate:
    """One model's chat template: how it renders a conversation, and which tokens of it a training example teaches.

    ``stop_ids``: the model's end-of-turn / end-of-text token ids (``localmodels.stop_token_ids``). Made with
    :meth:`of`, which checks the template once (a TemplateProblem says what is wrong)."""

    def __init__(self, tokenizer, stop_ids: Iterable[int], *, folds_system: bool, marked: bool,
                 calls: CallFormat = PROJECT_CALLS) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(stop_ids)
        #: the template refuses (or drops) a system message: it is put before the first user message's text, as
        #: Gemma's own later templates do with it
        self.folds_system = folds_system
        #: the template marks assistant turns with {% generation %}
        self.marked = marked
        #: how the model sees tools and writes calls: its template's own format, or the project's
        self.calls = calls

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
        chat = cls(tokenizer, stop_ids, folds_system=folds, marked=bool(GENERATION_MARKER.search(template)),
                   calls=template_calls(tokenizer, stop_ids))
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
    def conversation(self, messages: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """``messages`` as the template takes them, and its ``tools`` argument: plain text (calls structured where the
        template renders them), the ``functions`` as the template's tools or else listed in the system message
        (``with_tools``), and a system message folded into the first user message when the template has no system role."""
        if self.calls.native:
            return self._folded(plain_messages(messages, native_calls=True)), [{"type": "function", "function": f} for f in functions or []] or None
        return self._folded(plain_messages(with_tools(messages, functions or []))), None

    def _folded(self, plain: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.folds_system or not plain or plain[0]["role"] != "system":
            return plain
        system, rest = plain[0], plain[1:]
        if rest and rest[0]["role"] == "user":
            return [{**rest[0], "content": f"{system['content']}\n\n{rest[0]['content']}"}, *rest[1:]]
        return [{"role": "user", "content": system["content"]}, *rest]

    def render(self, messages: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None, *,
               add_generation_prompt: bool = False) -> str:
        conversation, tools = self.conversation(messages, functions)
        return _apply(self.tokenizer, conversation, add_generation_prompt=add_generation_prompt, tools=tools)

    def prompt_ids(self, messages: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None) -> list[int]:
        """The token ids of a prompt that asks for the next assistant turn, which may call ``functions``, cut into pieces
        where earlier assistant turns start and end, as a training example with these turns is (:meth:`encode_chat`)."""
        prompt = self.render(messages, functions, add_generation_prompt=True)
        if not any(m["role"] == "assistant" for m in messages):
            return self._tokens(prompt)
        try:
            text, spans = self.assistant_spans(messages, functions)
        except TemplateProblem:  # a template whose turns cannot be located: the prompt as one piece, as it is written
            return self._tokens(prompt)
        return self._pieces(prompt, spans)[0] if prompt.startswith(text) else self._tokens(prompt)

    # -- what a training example teaches ------------------------------------------------------
    def assistant_spans(self, messages: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None
                        ) -> tuple[str, list[tuple[int, int, bool]]]:
        """The rendered conversation and, per assistant message, the characters of its turn and whether it is learned
        (weight 1). From the template's {% generation %} marks where it has them, else from what each turn adds."""
        conversation, tools = self.conversation(messages, functions)
        assistant = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
        learned = [conversation[i]["weight"] == 1 for i in assistant]
        if self.marked:
            from transformers.utils.chat_template_utils import render_jinja_template

            # typed as returning the text, it returns the texts and each one's generation blocks (start, end)
            rendered, indices = cast(tuple[list[str], list[list[tuple[int, int]]]], render_jinja_template(
                conversations=[conversation], chat_template=self.tokenizer.chat_template, return_assistant_tokens_mask=True,
                tools=[*tools] if tools else None, **self.tokenizer.special_tokens_map))
            if len(indices[0]) != len(assistant):
                raise TemplateProblem(f"the chat template marks {len(indices[0])} generation blocks for {len(assistant)} "
                                      "assistant messages.")
            return rendered[0], [(start, end, keep) for (start, end), keep in zip(indices[0], learned)]
        text = _apply(self.tokenizer, conversation, tools=tools)
        spans = []
        for i, keep in zip(assistant, learned):
            before = _apply(self.tokenizer, conversation[:i], add_generation_prompt=True, tools=tools)
            through = _apply(self.tokenizer, conversation[: i + 1], tools=tools)
            if not through.startswith(before) or not text.startswith(through):
                raise TemplateProblem("the chat template writes an assistant turn differently once more messages follow, "
                                      "so its turns cannot be located in a conversation; add {% generation %} marks to it.")
            spans.append((len(before), len(through), keep))
        return text, spans

    def encode_chat(self, messages: list[dict[str, Any]], functions: list[dict[str, Any]] | None = None) -> tuple[list[int], list[int]]:
        """Token ids and labels: each learned assistant turn's tokens through its end-of-turn token; nothing else.
        With ``functions`` (an example's tools), the prompt shows them as an answer's prompt does (:meth:`conversation`).

        The text is tokenized in pieces cut where each assistant turn starts and ends, as a prompt is (``prompt_ids``), so
        the tokens before a turn are those the model gets when it answers (tokenized together, a tokenizer may join a
        prompt's closing newlines with the answer's first letters: Llama 3's template ends its prompt with two)."""
        return self._pieces(*self.assistant_spans(messages, functions))

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
        messages, functions = source["messages"], functions_of(source.get("tools") or source.get("functions"))
        out = {"prompt": self.prompt_ids(messages, functions)}
        for key, name in (("preferred_output", "chosen"), ("non_preferred_output", "rejected")):
            ids, labels = self.encode_chat([*messages, {**example[key][0], "role": "assistant"}], functions)
            out[name] = [i for i, label in zip(ids, labels) if label != IGNORE]
        return out


def _apply(tokenizer, conversation: list[dict[str, Any]], *, add_generation_prompt: bool = False,
           tools: list[dict[str, Any]] | None = None) -> str:
    return tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass(frozen=True)
class TurnMarkers:
    """A template's text around each turn, for runtimes that write chats with a template language of their own
    (Ollama's Go templates): ``start`` once, then per message ``prefix[role] + content + suffix[role]``, then
    ``prefix["assistant"]`` to ask for an answer; ``default_system`` is the system message the template writes when
    the conversation has none (Ollama's ``SYSTEM``)."""

    start: str
    prefix: dict[str, str]
    suffix: dict[str, str]
    default_system: str | None

    def render(self, messages: list[dict[str, str]]) -> str:
        """A conversation as these markers write it, with the generation prompt."""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        turns = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return self.start + turns + self.prefix["assistant"]


def turn_markers(tokenizer) -> TurnMarkers | None:
    """The markers around system, user and assistant turns, read from the template by rendering probe conversations;
    None where the template is not that simple (it writes a turn differently by its position or content, or has no
    system role): the markers are returned only if they give back the template's own text for every probe."""
    system, user, answer, again = "Sys-probe.", "User-probe.", "Answer-probe.", "Again-probe."
    sys_user = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    answered_turns = [*sys_user, {"role": "assistant", "content": answer}]
    probes = [sys_user, [{"role": "user", "content": user}], [*answered_turns, {"role": "user", "content": again}]]
    try:
        asked = _apply(tokenizer, sys_user, add_generation_prompt=True)
        closed = _apply(tokenizer, sys_user)
        answered = _apply(tokenizer, answered_turns)
        followed = _apply(tokenizer, probes[2], add_generation_prompt=True)
        alone = _apply(tokenizer, probes[1], add_generation_prompt=True)
    except Exception:  # noqa: BLE001  a template that refuses a system role, or its own error
        return None
    if system not in asked or user not in closed or answer not in answered:
        return None
    head, middle = asked[: asked.index(system)], asked[asked.index(system) + len(system): asked.index(user)]
    user_suffix, after_user = closed[closed.index(user) + len(user):], asked[asked.index(user) + len(user):]
    assistant_suffix = answered[answered.index(answer) + len(answer):]
    between = followed[followed.index(answer) + len(answer):] if answer in followed else ""
    if not (after_user.startswith(user_suffix) and between.startswith(assistant_suffix) and again in between):
        return None
    user_prefix = between[len(assistant_suffix): between.index(again)]
    if not middle.endswith(user_prefix) or user_prefix + user not in alone:
        return None
    system_suffix = middle[: len(middle) - len(user_prefix)]
    lead = alone[: alone.index(user_prefix + user)]  # what a conversation without a system message starts with
    start, system_prefix, default_system = "", head, None
    if lead.startswith(head) and lead.endswith(system_suffix) and len(lead) >= len(head) + len(system_suffix) and lead != head:
        default_system = lead[len(head): len(lead) - len(system_suffix)]  # the template's own system message
    elif head.startswith(lead):
        start, system_prefix = lead, head[len(lead):]
    else:
        return None
    markers = TurnMarkers(start=start, prefix={"system": system_prefix, "user": user_prefix, "assistant": after_user[len(user_suffix):]},
                          suffix={"system": system_suffix, "user": user_suffix, "assistant": assistant_suffix},
                          default_system=default_system)
    try:
        same = all(markers.render(p) == _apply(tokenizer, p, add_generation_prompt=True) for p in probes)
    except Exception:  # noqa: BLE001
        return None
    return markers if same else None
