"""The ``openai`` package's types, built before threads use them.

openai's models defer building their pydantic schemas to first use (its ``DEFER_PYDANTIC_BUILD``, on by default), and
pydantic's ``model_rebuild`` is not thread-safe: threads that parse the first answers of a process at once can each
start the build of the same class, one deletes what another built, and a parse raises
``AttributeError: type object 'ChatCompletion' has no attribute '__pydantic_core_schema__'`` (CI, stop 41: notebook 09's
first 16 concurrent chat completions). Reproduced with Python's switch interval at 1 us, 16 threads parsing a first
``ChatCompletion`` (with a tool call, logprobs and usage) the way the client does: a parse failed in 8 runs of 10;
with ``ChatCompletion`` alone built first, in 7 of 10 (its ``Choice``, message and usage classes build on their own);
with every model it holds built first (``ready``), in none of 10.
"""
from __future__ import annotations

import typing
from collections.abc import Iterator

import pydantic

__all__ = ["ready"]


def ready(*models: type[pydantic.BaseModel]) -> None:
    """Build ``models`` and every model their fields hold (recursively), here in the calling thread; cheap once built
    (measured: 19 ms for a first ``ChatCompletion`` and its parts)."""
    seen: set[type[pydantic.BaseModel]] = set()
    todo = list(models)
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        model.model_rebuild()  # builds a deferred model; returns at once when it is built
        for field in model.model_fields.values():
            todo.extend(_models_in(field.annotation))


def _models_in(annotation: object) -> Iterator[type[pydantic.BaseModel]]:
    """The pydantic models an annotation names: itself, or inside ``Optional``, ``List``, ``Union``, ``Annotated``..."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)
