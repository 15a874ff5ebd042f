"""Retrieval for the billing task: find the few codes whose index entry matches a request (BM25).

The index is what a coder's code book offers: each code's description plus its two most common
synonyms (the first two phrasings in ``cpt_source.json``); the test requests' other phrasings are not in it.
"""
from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path

from rank_bm25 import BM25Okapi

from helpers.dataprep import read_jsonl

from helpers.billing import SYSTEM_PROMPT, CptCode, code_reference, load_codes

INDEX_SYNONYMS = 2
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def _index() -> tuple[tuple[CptCode, ...], BM25Okapi]:
    codes = load_codes()
    documents = [_words(" ".join((c.description, *c.phrases[:INDEX_SYNONYMS]))) for c in codes]
    return codes, BM25Okapi(documents)


def retrieve(request: str, k: int = 5) -> list[CptCode]:
    """The ``k`` codes whose index entries best match the request."""
    codes, index = _index()
    scores = index.get_scores(_words(request))
    ranked = sorted(range(len(codes)), key=lambda i: -scores[i])
    return [codes[i] for i in ranked[:k]]


def rag_system_prompt(request: str, k: int = 5) -> str:
    """The task's instruction plus the retrieved candidate codes."""
    return f"{SYSTEM_PROMPT}\n\nCandidate codes:\n{code_reference(tuple(retrieve(request, k)))}"


def with_retrieval(messages: list[dict], k: int = 5) -> list[dict]:
    """The same request with its system prompt replaced by one that carries retrieved codes."""
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return [{"role": "system", "content": rag_system_prompt(user, k)}, *[m for m in messages if m["role"] != "system"]]


def augment_file(source: Path, target: Path, share: float, k: int = 5, seed: int = 0) -> int:
    """Copy a chat training file, giving a ``share`` of its examples (chosen with ``seed``) a system prompt
    that carries ``k`` retrieved candidate codes, so the tuned model learns to use retrieved codes as well as
    to answer from the short prompt. Returns how many examples got candidates."""
    if not 0 <= share <= 1:
        raise ValueError(f"RAG_SHARE must be between 0 and 1, got {share}.")
    rows = read_jsonl(source)
    chosen = set(random.Random(seed).sample(range(len(rows)), round(len(rows) * share)))
    out = [{**row, "messages": with_retrieval(row["messages"], k)} if i in chosen else row for i, row in enumerate(rows)]
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in out), encoding="utf-8")
    return len(chosen)
