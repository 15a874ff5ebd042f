"""Shared test set-up: offline, and small helpers to write JSONL files."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from helpers.data.tokens import ensure_offline_encodings  # noqa: E402

ensure_offline_encodings()  # tiktoken offline for every test, as `workbook` and the notebooks' set-up make it

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def write_jsonl(path: Path, rows: Iterable[object], *, newline: str = "\n", trailing: str = "") -> Path:
    """Write objects (or raw strings/bytes, written as they are) one per line."""
    chunks = []
    for row in rows:
        if isinstance(row, bytes):
            chunks.append(row)
        elif isinstance(row, str):
            chunks.append(row.encode())
        else:
            chunks.append(json.dumps(row).encode())
    path.write_bytes(newline.encode().join(chunks) + newline.encode() + trailing.encode())
    return path


def head_lines(path: Path, n: int) -> bytes:
    """The first ``n`` lines of a file, as bytes (a small training file cut from a course file)."""
    return b"".join(path.read_bytes().splitlines(keepends=True)[:n])


def chat(user: str = "lipid panel", answer: str = "Lipid panel - CPT Code: 80061", system: str | None = "You code.") -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def distinct_chats(n: int) -> list[dict]:
    return [chat(user=f"lipid panel number {i}") for i in range(n)]


@pytest.fixture
def jsonl(tmp_path):
    """``jsonl(rows, name=..., newline=..., trailing=...)`` writes a file in tmp_path and returns it."""
    def make(rows, name="data.jsonl", **kwargs):
        return write_jsonl(tmp_path / name, rows, **kwargs)
    return make


@pytest.fixture(scope="module")
def fp32():
    """A module whose servers, and the runtimes their exports are compared with, compute in fp32
    (``pytestmark = pytest.mark.usefixtures("fp32")``): an export must give the server's answers, and in fp32 every
    runtime computes the same thing. In bf16 (a CPU with AMX, a GPU) the server's own answers carry bf16 roundings that
    an f16 file or a merged model does not share: measured on a Xeon with AMX (2026-12-05), test_server's small model
    (16 examples, 2 epochs) gave the server's answer 3 times in 8 merged, llama.cpp at f16 parted from it away from any
    near-tie, and test_brought's plain-template model failed its llama.cpp comparison; in fp32 all of these pass."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBOOK_PRECISION", "fp32")
        yield


@pytest.hookimpl(trylast=True)  # after the slowest durations: next to the run's own time, in CI's tail
def pytest_terminal_summary(terminalreporter):
    """The one-time builds this environment's set-up made (``scripts/first_builds.py``), so a fresh clone's run says
    how much of ``make test`` they took: the 50-minute budget excepts them."""
    from helpers.paths import FIRST_BUILDS_LOG

    if FIRST_BUILDS_LOG.exists():
        terminalreporter.write_sep("-", "one-time builds of this environment (excepted from make test's 50 minutes)")
        for line in FIRST_BUILDS_LOG.read_text().splitlines():
            terminalreporter.write_line(line)
