"""The base models a server trains and serves: the shipped one (the catalogue's, under its own name and the OpenAI
names it stands in for) and those its user brings.

A user brings a model as ``NAME=SOURCE``: ``workbook serve --model NAME=SOURCE`` (repeatable), one per line in a file
(``--models FILE``, or the ``WORKBOOK_MODELS`` setting, which a server the notebooks start reads). SOURCE is

* a folder in Hugging Face's format: ``config.json``, weights (safetensors), a tokenizer with a chat template;
* a ``.gguf`` file (dequantized once into the model cache, as the shipped model is);
* a hub id (``Qwen/Qwen2.5-0.5B-Instruct``): downloaded into the hub's cache, only where the machine may download
  (``HF_HUB_OFFLINE`` unset); offline, a clear error.

Every check runs when the server starts (:func:`bring`), so a bad source stops ``workbook serve`` with a message that
names it, before anything is stored.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from helpers.pricing import catalogue
from helpers.pricing.catalogue import ModelSourceError, parse_model_spec, read_models_file
from helpers.settings import settings

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
OFFLINE_SETTINGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
MAX_COMPLETION_TOKENS = 4096  # a brought model's answer limit: at most this, at most half its context


@dataclass(frozen=True)
class Bases:
    """The base models one server knows: the catalogue's and the brought ones (``brought``: name -> base)."""

    brought: dict[str, catalogue.LocalBase] = field(default_factory=dict)

    def resolve(self, model: str) -> catalogue.LocalBase | None:
        """The base model that serves ``model`` (a brought name, a local name, an OpenAI name or snapshot), or None."""
        return self.brought.get(model) or catalogue.resolve_base(model)

    def by_name(self, name: str) -> catalogue.LocalBase | None:
        """A base model by the name a job or a fine-tuned model recorded (``_base``)."""
        return self.brought.get(name) or catalogue.base_models().get(name)

    def names(self) -> list[str]:
        """Every base model name a client may ask for."""
        return sorted({*catalogue.base_models(), *catalogue.aliases(), *self.brought})

    def missing(self, name: str) -> str:
        """Why a model recorded on base ``name`` cannot be served now (its base was brought by an earlier start)."""
        return (f"its base model '{name}' is not served by this server now: start it with --model {name}=SOURCE (or the "
                "same line in --models FILE / WORKBOOK_MODELS) as when it was trained.")


def brought_bases(models: Sequence[str] = (), models_file: str | None = None) -> Bases:
    """The bases of a server started with ``--model`` flags, a ``--models`` file and the ``WORKBOOK_MODELS`` setting,
    each checked (:func:`bring`); two models under one name, or a name the server already serves, is an error."""
    specs = [(*parse_model_spec(text, f"--model {text}"), f"--model {text}") for text in models]
    if models_file:
        specs += read_models_file(Path(models_file), "--models")
    setting = settings().models
    if setting is not None:
        specs += read_models_file(setting, "WORKBOOK_MODELS")
    taken = {name: "the shipped model or an OpenAI name it stands in for" for name in Bases().names()}
    for name, _, where in specs:  # every name first: a clash is found before any model is read
        if name in taken:
            raise ModelSourceError(f"{where}: two models under the name {name!r} (the other: {taken[name]}). Give each its own name.")
        taken[name] = where
    return Bases({name: bring(name, source, where) for name, source, where in specs})


def offline() -> str | None:
    """The setting that forbids downloads, if one is set."""
    return next((s for s in OFFLINE_SETTINGS if os.environ.get(s, "").strip().upper() in {"1", "ON", "YES", "TRUE"}), None)


def bring(name: str, source: str, where: str) -> catalogue.LocalBase:
    """A brought model as a base, after checking everything the server needs: its weights, a known causal-LM
    architecture, a tokenizer with a chat template that closes an assistant turn with an end-of-turn token."""
    from helpers.server import localmodels

    path = Path(source).expanduser()
    if path.exists():
        location = str(path.resolve())
    elif source.endswith(".gguf") or source.startswith((".", "/", "~")) or not HUB_ID.match(source):
        raise ModelSourceError(f"{where}: {source} does not exist. Give a folder in Hugging Face's format, a .gguf file, "
                               "or a hub id such as Qwen/Qwen2.5-0.5B-Instruct.")
    else:
        location = _download(source, where)
    if Path(location).is_dir():
        origin = f"the folder {location}"
    elif location.endswith(".gguf"):
        origin = f"the GGUF file {location}, dequantized once into the model cache"
    else:
        raise ModelSourceError(f"{where}: {location} is neither a folder nor a .gguf file.")
    base = catalogue.LocalBase(name=name, package="", gguf_file=Path(location).name if location.endswith(".gguf") else "",
                               context_length=0, max_completion_tokens=0, source=f"{name}, brought from {origin}",
                               location=location)
    try:
        folder = localmodels.weights_dir(base)
    except Exception as exc:  # noqa: BLE001  transformers' GGUF reader: an architecture it cannot convert, a bad file
        raise ModelSourceError(f"{where}: transformers cannot read {location}: {exc}") from None
    context = _context_length(_check_folder(folder, where))
    try:
        localmodels.load_chat(base)
    except ValueError as exc:  # TemplateProblem
        raise ModelSourceError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  a tokenizer transformers cannot load
        raise ModelSourceError(f"{where}: the tokenizer in {folder} cannot be loaded: {exc}") from None
    return replace(base, context_length=context, max_completion_tokens=min(MAX_COMPLETION_TOKENS, context // 2))


def _download(hub_id: str, where: str) -> str:
    blocked = offline()
    if blocked:
        raise ModelSourceError(f"{where}: {hub_id} is a hub id, and this machine may not download ({blocked}=1). Download "
                               f"it where you may (`hf download {hub_id} --local-dir DIR`) and bring the folder "
                               f"(NAME=DIR), or unset {blocked}.")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"])
    except Exception as exc:  # noqa: BLE001  not found, gated, no network
        raise ModelSourceError(f"{where}: {hub_id} could not be downloaded: {exc}") from None


def _check_folder(folder: Path, where: str):
    """A folder in Hugging Face's format with weights and an architecture transformers can train as a causal LM; its
    config."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (folder / "config.json").exists():
        raise ModelSourceError(f"{where}: {folder} has no config.json: a model folder in Hugging Face's format has config.json, "
                               "its weights (*.safetensors) and its tokenizer files.")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise ModelSourceError(f"{where}: {folder} has no weights (*.safetensors or pytorch_model*.bin).")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001  an unknown model_type, a broken config.json
        raise ModelSourceError(f"{where}: the architecture in {folder / 'config.json'} is unknown to transformers here "
                               f"({str(exc).splitlines()[0][:300]}).") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelSourceError(f"{where}: {folder} holds a {config.model_type!r} model, which is not a causal language model "
                               "transformers can fine-tune for chat.")
    return config


def _context_length(config) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attribute in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(text_config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
