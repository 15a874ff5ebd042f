"""The wire: pydantic models of the request bodies the server accepts, and the list envelope it answers with.

Each request model forbids fields OpenAI's API does not have, and says what a wrong value must be, in the words a
400 shows (:func:`helpers.server.errors.from_validation` turns the first problem into OpenAI's error shape, naming
the parameter). Checks that need the store or the catalogue (does this file exist? can this model be tuned here?)
are the routes' own. Responses are built as OpenAI's types describe them (``openai.types``); the contract tests
check them against OpenAI's OpenAPI description.
"""
from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from helpers.server import graders
from helpers.server.errors import bad_request, problem
from helpers.server.graders import Grader
from helpers.server.hyperparameters import hyperparameters, is_number, is_whole
from helpers.server.inference import Sampling
from helpers.server.methods import METHODS

MAX_SEED = 2_147_483_647
MODEL_REQUIRED = "'model' is required."
SUFFIX_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
#: Fields of OpenAI's chat-completion request that the local server accepts and does not use (as OpenAI ignores some
#: of them for some models): penalties, log-probabilities, caching and routing hints, labels.
CHAT_FIELDS_NOT_USED = ("audio", "frequency_penalty", "logit_bias", "logprobs", "modalities", "moderation", "prediction",
                        "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
                        "reasoning_effort", "safety_identifier", "service_tier", "top_logprobs", "user", "verbosity",
                        "web_search_options")


def required_text(message: str) -> BeforeValidator:
    """A non-empty string, else ``message``."""
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise problem(message)
        return value
    return BeforeValidator(check)


def check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise problem("'metadata' must be an object of string keys and string values.", "metadata")
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise problem("'metadata' allows at most 16 pairs, keys up to 64 characters and values up to 512.", "metadata")
    return metadata


Metadata = Annotated[Any, AfterValidator(check_metadata)]


class RequestBody(BaseModel):
    """A request body: only the fields OpenAI's API defines."""

    model_config = ConfigDict(extra="forbid")


# -- fine-tuning jobs ---------------------------------------------------------------------------------------------
def _file_id(param: str) -> BeforeValidator:
    return required_text(f"'{param}' must be the id of an uploaded file (for example 'file-abc123').")


def _optional_file_id(value: Any) -> str | None:
    if not value:
        return None
    if not isinstance(value, str):
        raise problem("'validation_file' must be the id of an uploaded file (for example 'file-abc123').")
    return value


def _seed(value: Any) -> int | None:
    if value is not None and (not is_whole(value) or not 0 <= value <= MAX_SEED):
        raise problem(f"'seed' must be a whole number between 0 and {MAX_SEED}.")
    return value


def _suffix(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not SUFFIX_PATTERN.match(value)):
        raise problem("'suffix' must be 1-64 characters of letters, digits, '-' or '_'.")
    return value


class CreateJob(RequestBody):
    """``POST /v1/fine_tuning/jobs``. ``method`` and ``hyperparameters`` are checked together: ``resolved`` holds
    the method's type and its hyperparameters (each a value or "auto")."""

    model: Annotated[str, required_text("'model' is required: the base model to fine-tune, for example 'gpt-4.1-mini'.")] = \
        Field(None, validate_default=True)
    training_file: Annotated[str, _file_id("training_file")]
    validation_file: Annotated[str | None, BeforeValidator(_optional_file_id)] = None
    hyperparameters: Any = None
    method: Any = None
    suffix: Annotated[Any, BeforeValidator(_suffix)] = None
    seed: Annotated[Any, BeforeValidator(_seed)] = None
    metadata: Metadata = None
    integrations: Any = None
    _kind: str = PrivateAttr("supervised")
    _hyper: dict[str, Any] = PrivateAttr(default_factory=dict)
    _grader: dict[str, Any] | None = PrivateAttr(None)
    _checked_grader: Grader | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _method_and_hyperparameters(self) -> CreateJob:
        method = self.method or {"type": "supervised"}
        # a type that is not text (an object, a list) is refused as any other: it is no key of METHODS
        if not isinstance(method, dict) or not isinstance(method.get("type"), str) or method["type"] not in METHODS:
            raise problem(f"'method.type' must be {' or '.join(repr(name) for name in METHODS)} on the local backend.", "method")
        kind = method["type"]
        settings = method.get(kind)
        method_hyper = settings.get("hyperparameters") if isinstance(settings, dict) else None
        if self.hyperparameters and method_hyper:
            raise problem("Give hyperparameters either at the top level or under 'method', not both.", "hyperparameters")
        self._kind = kind
        if METHODS[kind].graded:  # the grader as it was given, once it is one the server can run
            given = settings.get("grader") if isinstance(settings, dict) else None
            checked = _grader(given, f"method.{kind}.grader")
            if checked.type == "label_model":  # OpenAI's ReinforcementMethod.grader has none
                raise problem("A job's grader cannot be a label_model (OpenAI's takes string_check, text_similarity, "
                              "python, score_model or multi): put it in a multi grader, whose formula gives the reward.",
                              f"method.{kind}.grader.type", code="invalid_grader")
            self._grader, self._checked_grader = given, checked
        self._hyper = hyperparameters(method_hyper if method_hyper is not None else self.hyperparameters, kind)
        if self.integrations:
            raise problem("Integrations (Weights & Biases) are not available on the local backend.", "integrations")
        return self

    @property
    def kind(self) -> str:
        """The method's type: a name in ``helpers.server.methods.METHODS``."""
        return self._kind

    @property
    def grader(self) -> dict[str, Any] | None:
        """A graded method's grader (checked: the server can run it), as it was given; None for other methods."""
        return self._grader

    @property
    def checked_grader(self) -> Grader | None:
        """``grader`` as the server runs it (``helpers.server.graders.check``'s), so it is checked once."""
        return self._checked_grader

    @property
    def resolved(self) -> dict[str, Any]:
        """The method's hyperparameters, each a value or "auto"."""
        return dict(self._hyper)


# -- graders (reinforcement fine-tuning) ---------------------------------------------------------------------------
def _grader(value: Any, param: str = "grader") -> Grader:
    try:
        return graders.check(value, param)
    except graders.GraderError as exc:
        raise problem(str(exc), exc.param, code="invalid_grader") from None


class ValidateGrader(RequestBody):
    """``POST /v1/fine_tuning/alpha/graders/validate``: the grader, checked as a job would check it."""

    grader: Annotated[Any, BeforeValidator(_grader)] = Field(None, validate_default=True)


class RunGrader(ValidateGrader):
    """``POST /v1/fine_tuning/alpha/graders/run``: the grader, a model's answer (``sample``) and the dataset row (``item``)."""

    model_sample: Any = None
    item: Any = None

    @model_validator(mode="after")
    def _sample_is_text(self) -> RunGrader:
        if not isinstance(self.model_sample, str):
            raise problem("'model_sample' is required: the model's answer to grade, as text.", "model_sample")
        return self


# -- chat completions ---------------------------------------------------------------------------------------------
def _message(i: int, m: Any) -> dict[str, Any]:
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise problem(f"messages[{i}] needs a 'role' of system, developer, user, assistant or tool.", f"messages[{i}].role")
    content = m.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise problem(f"messages[{i}].content must be a string or a list of content parts.", f"messages[{i}].content")
    if isinstance(content, list) and not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                             for p in content):
        raise problem(f"messages[{i}].content: the local backend takes only text parts "
                      "({'type': 'text', 'text': '...'}).", f"messages[{i}].content")
    calls = m.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
            and isinstance(c["function"].get("arguments"), str) for c in calls)):
        raise problem(f"messages[{i}].tool_calls must be a list of {{'function': {{'name', 'arguments'}}}} objects.",
                      f"messages[{i}].tool_calls")
    call = m.get("function_call")
    if call is not None and not (isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("arguments"), str)):
        raise problem(f"messages[{i}].function_call must be an object with 'name' and 'arguments' strings.",
                      f"messages[{i}].function_call")
    return {**m, "role": "system" if m["role"] == "developer" else m["role"]}  # the chat template knows "system"


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise problem("'messages' must be a non-empty list of {role, content} objects.", "messages")
    return [_message(i, m) for i, m in enumerate(value)]


def _max_tokens(value: Any) -> int | None:
    if value is not None and (not is_whole(value) or value < 1):
        raise problem("'max_completion_tokens' (or 'max_tokens') must be a positive whole number.", "max_tokens")
    return value


def _between(name: str, low: float, high: float) -> BeforeValidator:
    def check(value: Any) -> float | None:
        if value is not None and (not is_number(value) or not low <= value <= high):
            raise problem(f"'{name}' must be a number between {low:g} and {high:g}, got {value!r}.", name)
        return None if value is None else float(value)
    return BeforeValidator(check)


def _n(value: Any) -> int:
    if not is_whole(value) or not 1 <= value <= 8:
        raise problem("'n' must be a whole number from 1 to 8 on the local backend.", "n")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    stop = (value,) if isinstance(value, str) else tuple(value or ()) if isinstance(value, list) or value is None else (None,)
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise problem("'stop' must be a string or a list of up to 4 non-empty strings.", "stop")
    return stop


def _chat_seed(value: Any) -> int | None:
    if value is not None and not is_whole(value):
        raise problem("'seed' must be a whole number.", "seed")
    return value


def _stream(value: Any) -> bool:
    if not isinstance(value, bool):
        raise problem("'stream' must be true or false.", "stream")
    return value


class ChatCompletion(RequestBody):
    """``POST /v1/chat/completions``. Tools, ``tool_choice`` and ``response_format`` are checked by
    :func:`helpers.server.structured.answering`, which turns them into a grammar; the fields in
    ``CHAT_FIELDS_NOT_USED`` are accepted and set aside in ``not_used``."""

    model: Annotated[str, required_text(MODEL_REQUIRED)]
    messages: Annotated[list[dict[str, Any]], BeforeValidator(_messages)]
    max_completion_tokens: Annotated[int | None, BeforeValidator(_max_tokens)] = None
    max_tokens: Annotated[int | None, BeforeValidator(_max_tokens)] = None
    temperature: Annotated[float | None, _between("temperature", 0, 2)] = None
    top_p: Annotated[float | None, _between("top_p", 0, 1)] = None
    n: Annotated[int, BeforeValidator(_n)] = 1
    stop: Annotated[tuple[str, ...], BeforeValidator(_stop)] = ()
    seed: Annotated[int | None, BeforeValidator(_chat_seed)] = None
    stream: Annotated[bool, BeforeValidator(_stream)] = False
    stream_options: Any = None
    store: Any = False
    metadata: Metadata = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    functions: Any = None
    function_call: Any = None
    not_used: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _set_aside_what_is_not_used(cls, body: Any) -> Any:
        if isinstance(body, dict):
            if "not_used" in body:
                raise problem("Unknown field(s) ['not_used'].", "not_used")
            return {**{k: v for k, v in body.items() if k not in CHAT_FIELDS_NOT_USED},
                    "not_used": {k: body[k] for k in CHAT_FIELDS_NOT_USED if k in body}}
        return body

    @model_validator(mode="after")
    def _one_streamed_answer(self) -> ChatCompletion:
        # a stream here carries one answer (choice 0): n answers streamed would lose n - 1 of them
        if self.stream and self.n > 1:
            raise problem(f"'n' is {self.n}, but a stream on this server carries one answer. Ask for the {self.n} answers "
                          "without 'stream', or stream them one request at a time.", "n")
        return self

    def sampling(self, max_completion_tokens: int, grammar: Any = None) -> Sampling:
        """How to sample, for a model that writes at most ``max_completion_tokens`` (a 400 above that)."""
        requested = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if requested is not None and requested > max_completion_tokens:
            raise bad_request(f"max_tokens is too large: {requested}. This model supports at most {max_completion_tokens} "
                              "completion tokens.", "max_tokens", code="invalid_value")
        return Sampling(requested or 256, 0.0 if self.temperature is None else self.temperature,
                        1.0 if self.top_p is None else self.top_p, self.n, self.stop, self.seed, grammar)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage")) if isinstance(self.stream_options, dict) else False


# -- answers ------------------------------------------------------------------------------------------------------
def public(body: dict[str, Any]) -> dict[str, Any]:
    """A stored record as the API shows it: the server's own fields (leading underscore) left out."""
    return {k: v for k, v in body.items() if not k.startswith("_")}


def page(items: list[dict[str, Any]], has_more: bool, *, first_last: bool = False, empty_id: str | None = "") -> dict[str, Any]:
    """A list envelope. ``first_last`` adds first_id/last_id; for an empty page they are ``empty_id``
    (the spec types them as strings for files and chat completions, string-or-null for checkpoints)."""
    body: dict[str, Any] = {"object": "list", "data": [public(i) for i in items], "has_more": has_more}
    if first_last:
        body["first_id"] = items[0]["id"] if items else empty_id
        body["last_id"] = items[-1]["id"] if items else empty_id
    return body
