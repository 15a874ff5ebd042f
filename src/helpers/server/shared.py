"""One copy of each base model in the server process, shared by the trainer and the inference engine.

A base model is loaded once, its weights in ``localmodels.compute_dtype()`` (bf16 where the CPU has bf16
kernels). A fine-tuning job adds its LoRA adapter to it (fp32 weights, trained under bf16 autocast) and
removes it when the job ends; the inference engine attaches each fine-tuned model's saved adapter by name (in
the compute dtype, a bounded cache, least recently used out) and answers for the base with every adapter
disabled. Nothing is ever merged into the shared weights.

Which adapter is active is state of the one model, so one thread uses it at a time: ``hold()`` is a fair
lock (first come, first served), so a training job and chat requests take turns, a step or a batch at a time,
and never run torch on the two cores at once.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from helpers.pricing import catalogue
from helpers.server import localmodels

MAX_ADAPTERS = 8  # fine-tuned models kept attached for inference
MAX_RESIDENT_MODELS = 2  # base models kept loaded (``workbook serve --max-resident-models``)
#: A fine-tuned model on disk: a LoRA adapter in peft's format (what `workbook export` copies out).
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
T = TypeVar("T")
log = logging.getLogger("workbook.models")


def in_own_thread(work: Callable[[], T], name: str) -> T:
    """Run ``work`` (torch work) in a thread that ends with it, and return its result or raise its exception.

    libgomp keeps a pool of OpenMP workers for every thread that has run a parallel region, until that thread
    ends; while more workers exist than CPUs, every parallel region wakes its workers from sleep instead of
    finding them spinning. A long-lived thread that once ran torch (the inference batcher, the job worker)
    would slow every other thread's torch work: measured, a job's steps took 1.45 s after one chat completion
    against 1.19 s without it. So the long-lived threads hand their torch work to short-lived ones."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class FairLock:
    """A lock granted in the order it was asked for (a ticket lock), so a thread that releases and at once asks
    again (a training loop) cannot starve the others (chat requests). Not re-entrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def idle(self) -> bool:
        """Nobody holds the lock or waits for it."""
        with self._cond:
            return self._serving == self._next_ticket

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()


def adapter_name(weights: Path) -> str:
    """A stable adapter name for a saved adapter's folder (peft names may not contain dots)."""
    return "m" + hashlib.sha1(str(weights.resolve()).encode()).hexdigest()[:16]


def set_attention(model, implementation: str) -> str:
    """Make ``model`` (a causal LM) attend with ``implementation`` ("sdpa" or "eager": see INFERENCE_ATTENTION); returns
    the one it had."""
    had = model.config._attn_implementation
    if implementation == "sdpa" and not getattr(model, "_supports_sdpa", False):
        implementation = "eager"  # a family transformers has no SDPA for (Gemma 2: its attention softcap)
    if had != implementation:
        model.set_attn_implementation(implementation)
    return had


#: ``SharedModel._active`` when the adapter layers are disabled: the plain base answers.
OFF = ("", False)


#: The attention kernel for each use of the shared model, measured here (benchmarks/RESULTS.md, tenth session):
#: SDPA generates faster at every prompt length (16 prompts of 1,612 tokens: 29 s against 115-143 s with eager; of 60
#: tokens: 2.2 s against 3.8 s); eager trains faster on the course's short examples (160 examples: 44 s against 51-59 s).
INFERENCE_ATTENTION, TRAINING_ATTENTION = "sdpa", "eager"


class SharedModel:
    """A base model, its chat template and tokenizer (left padding, for batched generation) and the adapters attached
    to it.

    Every method that touches the model is called inside ``hold()``."""

    def __init__(self, base: catalogue.LocalBase) -> None:
        self.base = base
        self.hold = FairLock()
        self.chat = localmodels.load_chat(base)
        self.tokenizer = self.chat.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # Llama 3 has none: batches are padded with the eos, which the mask hides
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = localmodels.load_model(base)
        self.model.eval()
        self.parameters = sum(p.numel() for p in self.model.parameters())  # before any adapter: the base model's own
        self.peft: Any = None  # a PeftModel around self.model, from the first adapter on
        self._inference: OrderedDict[str, None] = OrderedDict()  # inference adapters, least recently used first
        self._training: set[str] = set()
        self._references: dict[str, str] = {}  # training adapter -> the frozen adapter of the model its job starts from
        # (adapter, trainable) now active; OFF: adapter layers disabled; None: unknown (peft picks an adapter itself
        # when one is added or deleted), so the next request sets the state it needs
        self._active: tuple[str, bool] | None = None

    def idle(self) -> bool:
        """No training adapter on it and nobody using it: it may be unloaded."""
        return not self._training and self.hold.idle()

    def describe(self) -> dict:
        """What is loaded (for /health): the base, its dtype, the adapters attached for inference and training, and
        the frozen copies of starting models that training jobs compare with."""
        return {"base": self.base.name, "parameters": self.parameters, "device": str(self.model.device),
                "dtype": str(self.model.dtype).removeprefix("torch."), "inference_adapters": len(self._inference),
                "training_adapters": len(self._training), "reference_adapters": len(self._references)}

    # -- inference ------------------------------------------------------------------------------
    def for_inference(self, weights: Path | None):
        """The model to generate with: the plain base (None), or the base with the adapter saved in ``weights``."""
        self._attention(INFERENCE_ATTENTION)
        if weights is None:
            if self.peft is not None and self._active != OFF:
                self.peft.base_model.disable_adapter_layers()
                self._active = OFF
            return self.model
        name = adapter_name(weights)
        if name not in self._inference:
            self._attach(name, lambda: self._load(weights, name, trainable=False))
        self._inference[name] = None
        self._inference.move_to_end(name)
        while len(self._inference) > MAX_ADAPTERS:
            old, _ = self._inference.popitem(last=False)
            self.peft.delete_adapter(old)
            self._active = None
        self._activate(name, trainable=False)
        self.peft.eval()
        return self.peft

    def forget(self, weights: Path) -> None:
        """Drop a deleted model's adapter."""
        name = adapter_name(weights)
        if self._inference.pop(name, "absent") is None:
            self.peft.delete_adapter(name)
            self._active = None

    # -- training -------------------------------------------------------------------------------
    def add_training_adapter(self, name: str, settings, resume_from: Path | None = None):
        """Add a trainable LoRA adapter (new, seeded with the job's seed, or from a checkpoint); returns the model."""
        import torch

        def create() -> None:
            torch.manual_seed(settings.seed)  # the adapter's initial weights follow the job's seed
            if resume_from is not None:
                self._load(resume_from, name, trainable=True)
            elif self.peft is None:
                from peft import get_peft_model

                self.peft = get_peft_model(self.model, settings.lora_config(self.model), adapter_name=name)
            else:
                self.peft.add_adapter(name, settings.lora_config(self.model))

        self._attach(name, create)
        self._training.add(name)
        self._activate(name, trainable=True)
        self._attention(TRAINING_ATTENTION)
        return self.peft

    @contextmanager
    def training_turn(self, name: str) -> Iterator[None]:
        """Hold the model with the training adapter ``name`` active and trainable."""
        with self.hold():
            self._activate(name, trainable=True)
            self._attention(TRAINING_ATTENTION)
            yield

    def save_adapter(self, name: str, folder: Path) -> None:
        """Write adapter ``name`` in peft's format (``ADAPTER_FILES``: peft writes the config, we write the weights)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.peft, adapter_name=name)
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(folder / ADAPTER_WEIGHTS))
        self.peft.peft_config[name].save_pretrained(str(folder))

    def add_reference_adapter(self, training: str, weights: Path) -> str:
        """A frozen copy of the model the job of adapter ``training`` starts from (the adapter in ``weights``), for a
        method that compares its policy with it as it trains; removed with the training adapter. Returns its name."""
        name = f"reference_{training.removeprefix('train_')}"  # not containing the training adapter's name: peft matches names within keys
        self._attach(name, lambda: self._load(weights, name, trainable=False))
        self._references[training] = name
        return name

    @contextmanager
    def reference_turn(self, training: str) -> Iterator[None]:
        """Within ``training``'s turn: its reference adapter active (frozen), then ``training`` active and trainable again."""
        self._activate(self._references[training], trainable=False)
        try:
            yield
        finally:
            self._activate(training, trainable=True)

    @contextmanager
    def judge_turn(self, training: str, weights: Path | None) -> Iterator[Any]:
        """Within ``training``'s turn: another model of this base answering (the adapter in ``weights``, frozen, as for
        inference; None: the base), for a grader that asks a model; then ``training`` active and trainable again."""
        was_training = self.peft.training
        try:
            yield self.for_inference(weights)
        finally:
            self._activate(training, trainable=True)
            self._attention(TRAINING_ATTENTION)
            self.peft.train(was_training)

    def remove_training_adapter(self, name: str) -> None:
        if name in self._training:
            self._training.discard(name)
            self.peft.delete_adapter(name)
            self._active = None
        reference = self._references.pop(name, None)
        if reference is not None:
            self.peft.delete_adapter(reference)
            self._active = None

    # -- internals ------------------------------------------------------------------------------
    def _load(self, weights: Path, name: str, *, trainable: bool) -> None:
        """Load a saved adapter: fp32 to train on, the compute dtype to answer with."""
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, weights, adapter_name=name, is_trainable=trainable,
                                                  autocast_adapter_dtype=trainable)
        elif self.peft.active_adapter not in self.peft.peft_config:
            # every adapter was deleted (a job ended, nothing answered since), and peft still names the last one active:
            # loading a trainable adapter would read its config (KeyError). Loaded frozen, it is made trainable (and
            # active) by the training turn's set_adapter.
            self.peft.load_adapter(weights, adapter_name=name, is_trainable=False, autocast_adapter_dtype=trainable)
            self.peft.peft_config[name].inference_mode = not trainable
        else:
            self.peft.load_adapter(weights, adapter_name=name, is_trainable=trainable, autocast_adapter_dtype=trainable)

    def _attach(self, name: str, create) -> None:
        from helpers.server.training import keep_input_dtype

        with localmodels.LOADING:
            create()
        keep_input_dtype(self.peft)
        self._active = None  # adding an adapter may change which one peft has active

    def _attention(self, implementation: str) -> None:
        set_attention(self.model, implementation)

    def _activate(self, name: str, *, trainable: bool) -> None:
        """Make ``name`` the active adapter (a walk over every module in peft: skipped when it already is)."""
        if self._active == (name, trainable):
            return
        self.peft.base_model.enable_adapter_layers()
        self.peft.set_adapter(name, inference_mode=not trainable)
        self._active = (name, trainable)


class SharedModels:
    """The loaded base models by name, each loaded on first use; at most ``max_resident`` stay loaded (the least
    recently used one that is idle, with no training job on it, is unloaded to make room)."""

    def __init__(self, max_resident: int = MAX_RESIDENT_MODELS) -> None:
        self._models: OrderedDict[str, SharedModel] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.max_resident = max_resident

    def get(self, base: catalogue.LocalBase) -> SharedModel:
        with self._lock:
            shared = self._models.get(base.name)
            if shared is None:
                self._make_room()
                shared = self._models[base.name] = SharedModel(base)
            self._models.move_to_end(base.name)
            return shared

    def _make_room(self) -> None:
        unloaded = []
        for name, shared in list(self._models.items()):
            if len(self._models) < self.max_resident:
                break
            if shared.idle():
                del self._models[name]
                unloaded.append(name)
        if unloaded:
            localmodels.release_memory()
            log.info("unloaded %s to keep at most %d base models loaded (--max-resident-models)", ", ".join(unloaded), self.max_resident)

    def loaded(self) -> list[SharedModel]:
        with self._lock:
            return list(self._models.values())

    def memory(self) -> dict[str, float | None]:
        """The process's memory (``localmodels.memory``), for /health."""
        return localmodels.memory()
