"""Schemathesis hooks for the fuzz run (``test_faults.py``): the shared hostile strings (``hostile_text.py``) are
spliced into generated request bodies, so the generators send what the schema alone never would (a lone surrogate
escape is valid JSON, and hypothesis' text strategies never produce one)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import schemathesis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile_text import NOT_TEXT  # noqa: E402

STRINGS = [value for value, _ in NOT_TEXT.values()]


def salted(value, rng: random.Random):
    """``value`` with about a third of its strings given a hostile string."""
    if isinstance(value, str):
        return value + rng.choice(STRINGS) if rng.random() < 0.33 else value
    if isinstance(value, dict):
        return {key: salted(child, rng) for key, child in value.items()}
    if isinstance(value, list):
        return [salted(child, rng) for child in value]
    return value


@schemathesis.hook
def map_body(context, body):
    if context.operation is not None and context.operation.path == "/files":
        return body  # a multipart upload: the client encodes its fields as UTF-8, which a lone surrogate cannot be
    return salted(body, random.Random(repr(body)))
