"""Chat completions with a base model and any fine-tuned model or checkpoint: the engine seam and the in-process engine.

``Engine`` is what the API asks of an inference engine (submit, generate, stream, forget, prompt_tokens, call_format);
what every engine shares lives there: the prompt is rendered by the base model's own chat template here, in the server,
so that every engine answers the very tokens training saw, and an answer's tokens are turned into its text and finish
reason here too (``Engine.finish``). Two engines implement it: ``LocalEngine`` (below, the default) and
``helpers.server.vllm_engine.VllmEngine`` (vLLM, for a GPU box or many tuned models).

In the local engine, the base model is the one copy the server shares with the trainer (``helpers.server.shared``); fine-tuned
LoRA adapters are attached to it by name and kept (least recently used first out), so no request reloads
weights. Requests that arrive together for the same model and settings are generated as one left-padded
batch, between a training job's steps; a stream is generated a token at a time, taking turns with both.
Greedy decoding unless a temperature is given.
"""
from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch

from helpers.pricing import catalogue
from helpers.server import localmodels
from helpers.server.chat_template import CallFormat, ChatTemplate
from helpers.server.shared import SharedModels, in_own_thread
from helpers.server.structured import Constraint, GrammarLogitsProcessor
from helpers.server.training import padding_id

BATCH_WINDOW_S = 0.02  # a batch waits this long after its latest request for another one ...
MAX_BATCH_WAIT_S = 0.1  # ... and no longer than this after its first (see _batch_loop)
MAX_BATCH = 16
STREAM_AHEAD = 8  # tokens a stream's generation may run ahead of its reader
IDLE_RELEASE_S = 2.0  # after this long with no request, what the batches freed goes back to the system (see _batch_loop)
T = TypeVar("T")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = None  # the answer follows this grammar (llguidance's Lark: ``helpers.server.structured``)


@dataclass
class Generation:
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Target:
    """What serves a request: a base model, optionally with a LoRA adapter from a folder."""

    base: catalogue.LocalBase
    weights: Path | None = None


@dataclass
class _Request:
    target: Target
    messages: list[dict[str, Any]]
    sampling: Sampling
    functions: list[dict[str, Any]] | None = None
    future: Future = field(default_factory=Future)


class Engine(ABC):
    """What answers chat requests: thread-safe; the route awaits ``submit``'s future and reads ``stream``."""

    def __init__(self) -> None:
        self._counting: dict[str, ChatTemplate] = {}  # base name -> a tokenizer (and template) only for counting and decoding
        self._counting_lock = threading.Lock()
        self.stats: dict[str, Any] = {"engine": self.name, "requests": 0, "streams_active": 0, "streams_closed_early": 0}
        self._stats_lock = threading.Lock()  # streams start and end in the HTTP server's threads

    name = "engine"

    def unavailable(self, base: catalogue.LocalBase) -> str | None:
        """Why this engine cannot answer for ``base`` (a sentence saying what to do), or None."""
        return None

    def submit(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling,
               functions: list[dict[str, Any]] | None = None) -> Future:
        """Queue a request (whose answer may call ``functions``); the future holds its Generation. Waiting on it ties
        up no thread (the HTTP server awaits it).

        ``n`` greedy answers are the one greedy answer ``n`` times, each billed (as OpenAI answers ``n`` at temperature
        0): asked once, since transformers and vLLM both refuse ``n`` greedy sequences (this was a 500)."""
        if sampling.temperature > 0 or sampling.n == 1:
            return self._submit(target, messages, sampling, functions)
        once = self._submit(target, messages, replace(sampling, n=1), functions)
        answers: Future = Future()

        def repeat(done: Future) -> None:
            if (failure := done.exception()) is not None:
                answers.set_exception(failure)
                return
            one = done.result()
            answers.set_result(Generation(one.texts * sampling.n, one.finish_reasons * sampling.n, one.prompt_tokens,
                                          one.completion_tokens * sampling.n))

        once.add_done_callback(repeat)
        return answers

    @abstractmethod
    def _submit(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling,
                functions: list[dict[str, Any]] | None) -> Future:
        """``submit``, for a sampling this engine can honour as it is."""

    def generate(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling,
                 functions: list[dict[str, Any]] | None = None) -> Generation:
        return self.submit(target, messages, sampling, functions).result()

    @abstractmethod
    def forget(self, weights: Path) -> None:
        """Drop a deleted model's adapter."""

    def close(self) -> None:  # noqa: B027  # most engines start nothing of their own
        """Stop what the engine started (the server is shutting down)."""

    def prompt_tokens(self, base: catalogue.LocalBase, messages: list[dict[str, Any]],
                      functions: list[dict[str, Any]] | None = None) -> int:
        """Tokens of the rendered prompt. Uses a tokenizer of its own (a fast tokenizer must not be used by two
        threads at once), so counting never waits for a generation in progress."""
        return len(self.prompt_ids(base, messages, functions))

    def prompt_ids(self, base: catalogue.LocalBase, messages: list[dict[str, Any]],
                   functions: list[dict[str, Any]] | None = None) -> list[int]:
        """The prompt's tokens, rendered by the base model's chat template (with ``functions`` shown as it shows them)."""
        return self._with_counting_tokenizer(base, lambda chat: chat.prompt_ids(messages, functions))

    def call_format(self, base: catalogue.LocalBase) -> CallFormat:
        """How ``base`` writes tool calls: its template's own format, or the project's."""
        return self._with_counting_tokenizer(base, lambda chat: chat.calls)

    def _with_counting_tokenizer(self, base: catalogue.LocalBase, work: Callable[[ChatTemplate], T]) -> T:
        """``work(chat)`` with this engine's own tokenizer and template for ``base``, one thread at a time."""
        with self._counting_lock:
            chat = self._counting.get(base.name)
            if chat is None:
                chat = self._counting[base.name] = localmodels.load_chat(base)
            return work(chat)

    def _count(self, requests: int) -> None:
        """``requests`` more requests answered (or begun, for a stream)."""
        with self._stats_lock:
            self.stats["requests"] += requests

    def finish(self, base: catalogue.LocalBase, new: list[int], sampling: Sampling) -> tuple[str, str, int]:
        """``Engine._finish`` with this engine's own tokenizer for ``base``."""
        return self._with_counting_tokenizer(base, lambda chat: self._finish(chat, new, sampling))

    @staticmethod
    def _finish(chat: ChatTemplate, new: list[int], sampling: Sampling) -> tuple[str, str, int]:
        """Text, finish reason and tokens used of one generated sequence: it ends at the first of the model's stop
        tokens (not counted in the text, counted as used)."""
        end = next((i for i, token in enumerate(new) if token in chat.stop_ids), None)
        if end is not None:
            new = new[: end + 1]
            text, reason = chat.tokenizer.decode(new[:-1], skip_special_tokens=True), "stop"
        else:
            text, reason = chat.tokenizer.decode(new, skip_special_tokens=True), "length"
        for stop in sampling.stop:
            if stop in text:
                text, reason = text[: text.index(stop)], "stop"
        return text, reason, len(new)

    def stream(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling,
               closed: threading.Event | None = None, functions: list[dict[str, Any]] | None = None
               ) -> Iterator[tuple[str, str | None, int, int]]:
        """Yields (text piece, finish reason or None, prompt tokens, completion tokens so far).

        The tokens are made by a thread of the stream's own (the engine's ``_produce``), at most ``STREAM_AHEAD``
        tokens ahead of the reader (a client that stops reading stops its generation without holding anything), and
        that thread ends as soon as the stream is closed (a client that goes away): when ``closed`` is set, or this
        generator is closed."""
        tokens: queue.Queue = queue.Queue(maxsize=STREAM_AHEAD)
        closed = closed or threading.Event()
        producer = threading.Thread(target=self._produce, args=(target, messages, sampling, tokens, closed, functions),
                                    name="stream", daemon=True)
        with self._stats_lock:
            self.stats["streams_active"] += 1
        producer.start()
        new: list[int] = []
        emitted, reason, prompt_tokens = "", None, 0
        try:
            while True:
                try:
                    kind, value = tokens.get(timeout=0.1)
                except queue.Empty:
                    if closed.is_set():
                        return
                    continue
                if kind == "error":
                    raise value
                if kind == "prompt":
                    prompt_tokens = value
                    continue
                if kind == "end":
                    break
                new.append(value)
                text, reason, _ = self._finish_stream(target.base, new, sampling)
                # hold back what could still become a stop string, and half of a character
                longest = max((len(stop) for stop in sampling.stop), default=0)
                hold = max((len(text) - i for stop in sampling.stop for i in range(max(0, len(text) - longest), len(text))
                            if stop.startswith(text[i:])), default=0)
                visible = text if reason is not None else text[:len(text) - hold].rstrip("\ufffd")
                if len(visible) > len(emitted):
                    yield visible[len(emitted):], None, prompt_tokens, 0
                    emitted = visible
                if reason is not None:
                    break
            text, reason, used = self._finish_stream(target.base, new, sampling)
            if len(text) > len(emitted):
                yield text[len(emitted):], None, prompt_tokens, 0
            yield "", reason or "length", prompt_tokens, used
        finally:
            closed.set()
            with self._stats_lock:
                self.stats["streams_active"] -= 1
                self.stats["streams_closed_early"] += int(reason is None)

    def _finish_stream(self, base: catalogue.LocalBase, new: list[int], sampling: Sampling) -> tuple[str, str | None, int]:
        """Text so far, finish reason if the stream is done (end of text or a stop string; None if not), tokens used."""
        # the engine's own tokenizer: the shared one may be decoding a batch right now
        text, reason, used = self.finish(base, new, sampling)
        done = reason == "stop" or len(new) >= sampling.max_tokens
        return text, reason if done else None, used

    @abstractmethod
    def _produce(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling, out: queue.Queue,
                 closed: threading.Event, functions: list[dict[str, Any]] | None) -> None:
        """A stream's tokens into ``out`` (by ``put_until_closed``): ("prompt", prompt tokens) first, then ("token",
        id) each, then ("end", None); or ("error", exception). Stops as soon as ``closed`` is set."""


def put_until_closed(out: queue.Queue, closed: threading.Event, item: tuple[str, Any]) -> bool:
    """Put ``item`` into a stream's queue, waiting while the reader is behind; False once the stream is closed."""
    while not closed.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class LocalEngine(Engine):
    """The in-process engine: generates with the server's own copy of each base model; batches concurrent requests."""

    name = "local"

    def __init__(self, models: SharedModels) -> None:
        super().__init__()
        self.stats.update(batches=0, largest_batch=0)  # batches are this engine's own (vLLM batches in its own way)
        self.models = models
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._unreleased = False  # batches have run since memory was last released
        self._worker = threading.Thread(target=self._batch_loop, name="inference", daemon=True)
        self._worker.start()

    def _count_batch(self, size: int) -> None:
        self._count(size)
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], size)

    def forget(self, weights: Path) -> None:
        """Drop a deleted model's adapter from memory."""
        for shared in self.models.loaded():
            with shared.hold():
                shared.forget(weights)

    # -- generation -----------------------------------------------------------------------------
    def _submit(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling,
                functions: list[dict[str, Any]] | None) -> Future:
        """Queued for the next batch: every request that arrives can join one, up to MAX_BATCH."""
        request = _Request(target, messages, sampling, functions)
        self._requests.put(request)
        return request.future

    def _batch_loop(self) -> None:
        while True:
            # A batch is generated as a whole, so clients that send a new request when their answer arrives would
            # otherwise settle into several half-full batches taking turns (measured: 64 requests from 16 threads went
            # in batches of 8). Waiting a little for requests still arriving keeps batches full.
            # Batches of long prompts leave glibc holding what their activations and caches freed (the server held
            # 2.1 GB after 04's answers, against 1.0 GB after 03's training, which releases after each job); handing
            # it back once the engine goes quiet costs nothing a request waits for.
            try:
                first = self._requests.get(timeout=IDLE_RELEASE_S if self._unreleased else None)
            except queue.Empty:
                self._unreleased = False
                localmodels.release_memory()
                continue
            self._unreleased = True
            batch = [first]
            started = latest = time.monotonic()
            held: list[_Request] = []
            while len(batch) < MAX_BATCH:
                try:
                    item = self._requests.get(timeout=max(0.0, min(latest + BATCH_WINDOW_S, started + MAX_BATCH_WAIT_S) - time.monotonic()))
                except queue.Empty:
                    break
                if (item.target, item.sampling) == (first.target, first.sampling):
                    batch.append(item)
                    latest = time.monotonic()
                else:
                    held.append(item)
            for item in held:
                self._requests.put(item)
            self._count_batch(len(batch))
            try:
                results = in_own_thread(partial(self._run_batch, first.target, [(r.messages, r.functions) for r in batch], first.sampling),
                                        "inference batch")
                for request, result in zip(batch, results):
                    request.future.set_result(result)
            except Exception as exc:  # reported to each caller
                for request in batch:
                    request.future.set_exception(exc)

    def _kwargs(self, chat: ChatTemplate, sampling: Sampling) -> dict[str, Any]:
        tokenizer = chat.tokenizer
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": padding_id(tokenizer),
                                  "eos_token_id": sorted(chat.stop_ids), "num_return_sequences": sampling.n}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
        return kwargs

    def _run_batch(self, target: Target, conversations: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]],
                   sampling: Sampling) -> list[Generation]:
        shared = self.models.get(target.base)
        chat, tokenizer = shared.chat, shared.tokenizer
        with shared.hold():
            model = shared.for_inference(target.weights)
            prompts = [chat.prompt_ids(messages, functions) for messages, functions in conversations]
            encoded = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)  # on the left
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            kwargs = self._kwargs(chat, sampling)
            if sampling.grammar is not None:
                kwargs["logits_processor"] = [GrammarLogitsProcessor(tokenizer, sampling.grammar, encoded["input_ids"].shape[1])]
            with torch.no_grad():
                output = model.generate(**encoded, **kwargs)
        width = encoded["input_ids"].shape[1]
        results = []
        for i, _ in enumerate(conversations):
            prompt_tokens = int(encoded["attention_mask"][i].sum())
            texts, reasons, completion_tokens = [], [], 0
            for j in range(sampling.n):
                new = output[i * sampling.n + j, width:].tolist()
                text, reason, used = self._finish(chat, new, sampling)
                texts.append(text)
                reasons.append(reason)
                completion_tokens += used
            results.append(Generation(texts, reasons, prompt_tokens, completion_tokens))
        return results

    def _produce(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling, out: queue.Queue,
                 closed: threading.Event, functions: list[dict[str, Any]] | None) -> None:
        """One forward pass per turn of the model, holding it only for that pass, so other requests and a training
        job's steps take their turns between a stream's tokens: a long stream delays a short request by a token, not by
        the whole answer."""
        put = partial(put_until_closed, out, closed)
        try:
            shared = self.models.get(target.base)
            generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
            with shared.hold():
                chat = shared.chat
                step_input = torch.tensor([chat.prompt_ids(messages, functions)])
                constraint = Constraint(chat.tokenizer, sampling.grammar) if sampling.grammar is not None else None
            if not put(("prompt", int(step_input.shape[1]))):
                return
            cache, new = None, []
            for _ in range(sampling.max_tokens):
                if closed.is_set():
                    return
                with shared.hold():
                    model = shared.for_inference(target.weights)
                    with torch.no_grad():
                        output = model(input_ids=step_input.to(model.device), past_key_values=cache, use_cache=True)
                cache = output.past_key_values
                logits = output.logits[0, -1].float()
                token = _next_token(constraint.mask(logits) if constraint else logits, sampling, generator)
                if constraint:
                    constraint.take(token)
                new.append(token)
                if not put(("token", token)):
                    return
                if token in chat.stop_ids or (sampling.stop and self._finish_stream(target.base, new, sampling)[1] == "stop"):
                    break
                step_input = torch.tensor([[token]])
            put(("end", None))
        except BaseException as exc:  # raised in the reader's thread
            put(("error", exc))


def _next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Greedy, or a sample at ``temperature`` from the smallest set of tokens whose probability reaches ``top_p``."""
    if sampling.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p  # keeps at least the likeliest token
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
