"""The one-time builds of a set-up (llama.cpp from source, vLLM's own environment), each written with its date and
duration to ``helpers.paths.FIRST_BUILDS_LOG`` (in the environment that made it), so the test run's summary can say
what part of a fresh clone's ``make test`` they took (they are excepted from its 50 minutes)."""
from __future__ import annotations

import time

from helpers.paths import FIRST_BUILDS_LOG


def record(what: str, seconds: float) -> None:
    with FIRST_BUILDS_LOG.open("a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {what} in {seconds:.0f} s\n")
