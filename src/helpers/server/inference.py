"""Chat completions with the local base model and any fine-tuned model or checkpoint.

One copy of each base model stays loaded; fine-tuned LoRA adapters are attached to it by name and kept
(least recently used first out), so no request reloads weights. Requests that arrive together for the same
model and settings are generated as one left-padded batch. Greedy decoding unless a temperature is given.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from helpers.server import localmodels
from helpers.server.training import render

MAX_ADAPTERS = 8
BATCH_WINDOW_S = 0.02
MAX_BATCH = 16


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Generation:
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Target:
    """What serves a request: a base model, optionally with an adapter (or full weights) from a folder."""

    base: localmodels.LocalBase
    weights: Path | None = None
    full: bool = False


@dataclass
class _Request:
    target: Target
    messages: list[dict[str, Any]]
    sampling: Sampling
    future: Future = field(default_factory=Future)


class _Loaded:
    """A base model with its tokenizer and the adapters attached to it."""

    def __init__(self, base: localmodels.LocalBase) -> None:
        self.tokenizer = localmodels.load_tokenizer(base)
        self.tokenizer.padding_side = "left"
        self.model = localmodels.load_model(base)
        self.model.eval()
        self.adapters: OrderedDict[str, None] = OrderedDict()
        self.peft = None

    def use(self, weights: Path | None):
        """The model to call for ``weights`` (None: the plain base)."""
        if weights is None:
            if self.peft is not None:
                self.peft.base_model.disable_adapter_layers()
            return self.peft or self.model
        from peft import PeftModel

        name = weights.name
        with localmodels.LOADING:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, weights, adapter_name=name)
            elif name not in self.adapters:
                self.peft.load_adapter(weights, adapter_name=name)
        self.adapters[name] = None
        self.adapters.move_to_end(name)
        while len(self.adapters) > MAX_ADAPTERS:
            old, _ = self.adapters.popitem(last=False)
            self.peft.delete_adapter(old)
        self.peft.base_model.enable_adapter_layers()
        self.peft.set_adapter(name)
        self.peft.eval()
        return self.peft


class Engine:
    """Generates completions; thread-safe; batches concurrent requests."""

    def __init__(self) -> None:
        self._loaded: dict[str, _Loaded] = {}
        self._full: OrderedDict[Path, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()  # one generation at a time: the CPU is the bottleneck
        self._counting: dict[str, Any] = {}  # base name -> a tokenizer only for counting prompt tokens
        self._counting_lock = threading.Lock()
        self._requests: queue.Queue[_Request] = queue.Queue()
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
        self._worker = threading.Thread(target=self._batch_loop, name="inference", daemon=True)
        self._worker.start()

    # -- models ---------------------------------------------------------------------------------
    def _model(self, target: Target):
        if target.full and target.weights is not None:
            if target.weights not in self._full:
                from transformers import AutoModelForCausalLM

                with localmodels.LOADING:
                    model = AutoModelForCausalLM.from_pretrained(target.weights, dtype=torch.float32).to(localmodels.default_device()).eval()
                self._full[target.weights] = (model, self._base(target.base).tokenizer)
                while len(self._full) > 2:
                    self._full.popitem(last=False)
            return self._full[target.weights]
        loaded = self._base(target.base)
        return loaded.use(target.weights), loaded.tokenizer

    def _base(self, base: localmodels.LocalBase) -> _Loaded:
        if base.name not in self._loaded:
            self._loaded[base.name] = _Loaded(base)
        return self._loaded[base.name]

    def forget(self, weights: Path) -> None:
        """Drop a deleted model's adapter from memory."""
        with self._lock:
            self._full.pop(weights, None)
            for loaded in self._loaded.values():
                if weights.name in loaded.adapters and loaded.peft is not None:
                    loaded.adapters.pop(weights.name)
                    loaded.peft.delete_adapter(weights.name)

    def prompt_tokens(self, base: localmodels.LocalBase, messages: list[dict[str, Any]]) -> int:
        """Tokens of the rendered prompt. Uses a tokenizer of its own (a fast tokenizer must not be used by two
        threads at once), so counting never waits for a generation in progress."""
        with self._counting_lock:
            tokenizer = self._counting.get(base.name)
            if tokenizer is None:
                tokenizer = self._counting[base.name] = localmodels.load_tokenizer(base)
            return len(tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"])

    # -- generation -----------------------------------------------------------------------------
    def submit(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling) -> Future:
        """Queue a request for the next batch; the future holds its Generation. Waiting on it ties up no thread
        (the HTTP server awaits it), so every request that arrives can join a batch, up to MAX_BATCH."""
        request = _Request(target, messages, sampling)
        self._requests.put(request)
        return request.future

    def generate(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling) -> Generation:
        return self.submit(target, messages, sampling).result()

    def _batch_loop(self) -> None:
        while True:
            first = self._requests.get()
            batch = [first]
            deadline = time.monotonic() + BATCH_WINDOW_S
            held: list[_Request] = []
            while len(batch) < MAX_BATCH:
                try:
                    item = self._requests.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                (batch if (item.target, item.sampling) == (first.target, first.sampling) else held).append(item)
            for item in held:
                self._requests.put(item)
            self.stats["requests"] += len(batch)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            try:
                results = self._run_batch(first.target, [r.messages for r in batch], first.sampling)
                for request, result in zip(batch, results):
                    request.future.set_result(result)
            except Exception as exc:  # reported to each caller
                for request in batch:
                    request.future.set_exception(exc)

    def _kwargs(self, tokenizer, sampling: Sampling) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": tokenizer.eos_token_id,
                                  "num_return_sequences": sampling.n}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
        return kwargs

    def _run_batch(self, target: Target, conversations: list[list[dict[str, Any]]], sampling: Sampling) -> list[Generation]:
        with self._lock:
            model, tokenizer = self._model(target)
            prompts = [render(tokenizer, messages, add_generation_prompt=True) for messages in conversations]
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.no_grad():
                output = model.generate(**encoded, **self._kwargs(tokenizer, sampling))
        width = encoded["input_ids"].shape[1]
        results = []
        for i, _ in enumerate(conversations):
            prompt_tokens = int(encoded["attention_mask"][i].sum())
            texts, reasons, completion_tokens = [], [], 0
            for j in range(sampling.n):
                new = output[i * sampling.n + j, width:].tolist()
                text, reason, used = self._finish(tokenizer, new, sampling)
                texts.append(text)
                reasons.append(reason)
                completion_tokens += used
            results.append(Generation(texts, reasons, prompt_tokens, completion_tokens))
        return results

    @staticmethod
    def _finish(tokenizer, new: list[int], sampling: Sampling) -> tuple[str, str, int]:
        """Text, finish reason and tokens used of one generated sequence."""
        eos = tokenizer.eos_token_id
        if eos in new:
            new = new[: new.index(eos) + 1]
            text, reason = tokenizer.decode(new[:-1], skip_special_tokens=True), "stop"
        else:
            text, reason = tokenizer.decode(new, skip_special_tokens=True), "length"
        for stop in sampling.stop:
            if stop in text:
                text, reason = text[: text.index(stop)], "stop"
        return text, reason, len(new)

    def stream(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling) -> Iterator[tuple[str, str | None, int, int]]:
        """Yields (text piece, finish reason or None, prompt tokens, completion tokens so far)."""
        from transformers import TextIteratorStreamer

        with self._lock:
            model, tokenizer = self._model(target)
            prompt = render(tokenizer, messages, add_generation_prompt=True)
            encoded = tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(model.device)
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            kwargs = {**self._kwargs(tokenizer, Sampling(**{**sampling.__dict__, "n": 1})), "streamer": streamer}
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            result: dict[str, Any] = {}

            def run() -> None:
                with torch.no_grad():
                    result["output"] = model.generate(**encoded, **kwargs)

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            prompt_tokens = int(encoded["input_ids"].shape[1])
            text = emitted = ""
            for piece in streamer:
                text += piece
                stop_at = min((text.index(s) for s in sampling.stop if s in text), default=None)
                visible = text if stop_at is None else text[:stop_at]
                if len(visible) > len(emitted):
                    yield visible[len(emitted):], None, prompt_tokens, 0
                    emitted = visible
                if stop_at is not None:
                    break  # generate() stops at the same string (stop_strings)
            thread.join()
            new = result["output"][0, prompt_tokens:].tolist()
            _, reason, used = self._finish(tokenizer, new, sampling)
            yield "", reason, prompt_tokens, used
