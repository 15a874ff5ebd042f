"""Retrieval for the billing task: find the few codes whose index entry matches a request (BM25).

The index is what a coder's code book offers: each code's description plus its two most common
synonyms (the first two phrasings in ``cpt_source.json``); the test requests' other phrasings are not in it.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rank_bm25 import BM25Okapi

from helpers.course.billing import (
    ANSWER_FORM,
    SYSTEM_PROMPT,
    TRAIN_PHRASES,
    CptCode,
    code_reference,
    format_answer,
    load_codes,
    parse_answer,
)
from helpers.data.dataprep import read_jsonl, write_jsonl

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


CANDIDATES_HEADING = "\n\nCandidate codes:\n"


def rag_system_prompt(request: str, k: int = 5) -> str:
    """The task's instruction plus the retrieved candidate codes."""
    return f"{SYSTEM_PROMPT}{CANDIDATES_HEADING}{code_reference(tuple(retrieve(request, k)))}"


def _request(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def with_retrieval(messages: list[dict], k: int = 5) -> list[dict]:
    """The same request with its system prompt replaced by one that carries retrieved codes."""
    return [{"role": "system", "content": rag_system_prompt(_request(messages), k)}, *[m for m in messages if m["role"] != "system"]]


def candidate_answers(messages: list[dict], k: int = 5) -> list[str]:
    """The answers retrieval offers a request: its ``k`` retrieved codes, each written as its answer (for constrained
    decoding: the model may only pick one of them)."""
    return [code.answer for code in retrieve(_request(messages), k)]


UNASSIGNED_NUMBERS = range(2000, 10000)  # 02000-09999: after CPT's anesthesia codes, before its surgery codes; no code uses them


@dataclass(frozen=True)
class Augmented:
    """What :func:`augment_file` did: how many examples carry retrieved codes, and how many of those carry their
    answer renumbered."""
    with_codes: int
    renumbered: int


@lru_cache(maxsize=1)
def _codes_by_number() -> dict[str, CptCode]:
    return {c.code: c for c in load_codes()}


def renumber(example: dict, rng: random.Random) -> dict:
    """The example with its right code rewritten, in the candidates and in the answer, as an entry the model cannot
    know: one of the code's own training phrasings as the description and a number no CPT code uses. Its answer can
    only be copied from the candidates, which is what the model must do for a code it never trained on."""
    system, *rest = example["messages"]
    code = parse_answer(rest[-1]["content"])[0]
    known = _codes_by_number()[code]
    phrase = rng.choice(known.phrases[:TRAIN_PHRASES])  # never a held-out phrasing
    line = format_answer(f"{rng.choice(UNASSIGNED_NUMBERS):05d}", phrase[0].upper() + phrase[1:])
    head, _, table = system["content"].partition(CANDIDATES_HEADING)
    lines = table.split("\n")
    at = lines.index(known.answer) if known.answer in lines else rng.randrange(len(lines))
    lines[at] = line
    return {**example, "messages": [{**system, "content": head + CANDIDATES_HEADING + "\n".join(lines)}, *rest[:-1],
                                    {**rest[-1], "content": line}]}


def augment_file(source: Path, target: Path, share: float, k: int = 5, seed: int = 0, renumbered_share: float = 0.0) -> Augmented:
    """Copy a chat training file, giving a ``share`` of its examples (chosen with ``seed``) a system prompt
    that carries ``k`` retrieved candidate codes, so the tuned model learns to use retrieved codes as well as
    to answer from the short prompt; a ``renumbered_share`` of those get their answer renumbered (:func:`renumber`),
    so that it learns to copy from the candidates rather than answer from memory."""
    for name, value in (("RAG_SHARE", share), ("RENUMBERED_SHARE", renumbered_share)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value}.")
    rows = read_jsonl(source)
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(rows)), round(len(rows) * share)))
    renumbered = set(rng.sample(sorted(chosen), round(len(chosen) * renumbered_share)))
    out = []
    known = {c.code for c in load_codes()}
    for i, row in enumerate(rows):
        if i in chosen:
            row = {**row, "messages": with_retrieval(row["messages"], k)}
        if i in renumbered:
            answer = (row.get("messages") or [{}])[-1].get("content")
            parsed = parse_answer(answer) if isinstance(answer, str) else None
            if parsed is None or parsed[0] not in known:
                raise ValueError(f"{source}, example {i + 1}: its answer is not a course code in the form \"{ANSWER_FORM}\", "
                                 "so it cannot be renumbered; set RENUMBERED_SHARE = 0 for data of your own.")
            row = renumber(row, rng)
        out.append(row)
    write_jsonl(out, target)
    return Augmented(len(chosen), len(renumbered))
