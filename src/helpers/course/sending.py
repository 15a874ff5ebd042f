"""Sending a lesson's requests at once: the local server batches those that arrive together."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pydantic
from openai.types.chat import ChatCompletion

from helpers.openai_models import ready

__all__ = ["send_all"]

Item, Result = TypeVar("Item"), TypeVar("Result")


def send_all(send: Callable[[Item], Result], items: Iterable[Item], concurrency: int,
             answers: tuple[type[pydantic.BaseModel], ...] = (ChatCompletion,)) -> list[Result]:
    """``send(item)`` for every item, ``concurrency`` at a time, the results in the items' order. The ``openai`` types
    of the ``answers`` the calls parse are built first, here: their first build in many threads at once is not safe
    (``helpers.openai_models``)."""
    items = list(items)
    ready(*answers)
    with ThreadPoolExecutor(max(1, min(concurrency, len(items)))) as pool:
        return list(pool.map(send, items))
