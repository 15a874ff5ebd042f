"""The course task: medical billing. A procedure description in, ``Description - CPT Code: NNNNN`` out.

The answer names the procedure before its code. A model writes left to right, so the number is written
after, and conditioned on, the description it has just written; with the number first it must recall five
digits from the request alone. Measured in ``benchmarks/RESULTS.md``: the same three-epoch job scored
0.838-0.856 held-out code accuracy this way in the sweep, against 0.793 with the number first.

This module owns the task's facts (system prompt, answer format, code table) and makes the course data
reproducibly from ``data/billing/cpt_source.json``: ``python scripts/make_billing_data.py`` rewrites
every file in ``data/billing/`` byte for byte (tests/test_billing_data.py checks it).

How the splits are made (per code, with a fixed seed):

* the first five phrasings of a code feed **train** and the **pool**; the last three are held out and feed
  **validation** and **test**, so a test paraphrase is never seen in training;
* each user message is a phrasing put in a clinical frame ("Pt seen today for ..."), sometimes with a
  typo, lower-cased or upper-cased, the way real notes arrive; no user message appears in two files;
* codes marked ``in_training: false`` appear only in ``test_new_codes.jsonl``: facts the fine-tuned
  model has never seen, to show what retrieval adds;
* ``pool.jsonl`` is unlabeled (``id`` and ``procedure``): what a teacher model labels for distillation;
  ``pool_answers.jsonl`` (``id`` and ``code``) is its answer key, never shown to teacher or student, only
  used to measure how often the teacher's labels are right;
* ``flawed.jsonl`` is deliberately broken, one flaw per line, for the data-prep lesson.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from helpers.data.dataprep import write_jsonl
from helpers.data.validate import duplicate_key
from helpers.paths import DATA_DIR

BILLING_DIR = DATA_DIR / "billing"
SEED = 20261124
SYSTEM_PROMPT = ("You are a medical billing assistant. Reply with the procedure in exactly this form: "
                 "Description - CPT Code: NNNNN")
ANSWER_FORM = "Description - CPT Code: NNNNN"
ANSWER_PATTERN = re.compile(r"^(\S.*?) - CPT Code: (\d{5})$")
TRAIN_PHRASES = 5
SPLIT_SIZES = {"train": 9, "validation": 2, "test": 3, "pool": 12, "test_new_codes": 5}  # per code

FRAMES = (
    "{p}", "{p}.", "Procedure: {p}", "Please code: {p}", "What is the CPT code for {p}?",
    "Pt seen today for {p}.", "{age}yo {sex}, {p}", "{age} year old {sexword} - {p}",
    "Billing note: {p}, no complications.", "Chart says {p}", "Need a code for {p} pls",
    "Service rendered: {p}", "{p}, done in clinic today", "Encounter: {p}. Dx pending.",
    "code this: {p}", "Documentation: {p} ({setting})",
)
SETTINGS = ("outpatient", "office", "hospital outpatient dept")


@dataclass(frozen=True)
class CptCode:
    code: str
    description: str
    category: str
    in_training: bool
    phrases: tuple[str, ...]

    @property
    def answer(self) -> str:
        return format_answer(self.code, self.description)


def format_answer(code: str, description: str) -> str:
    """The one answer format the course trains and scores: ``Office visit, ... - CPT Code: 99213``."""
    return f"{description} - CPT Code: {code}"


def cpt_definition_findings(answer: str | None) -> list[str]:
    """What a model's answer to "what is a CPT code?" shows: does it know what CPT stands for?"""
    if "procedural terminology" in (answer or "").lower():
        return ["The answer knows what CPT stands for: Current Procedural Terminology, the American Medical "
                "Association's codes for medical procedures and services."]
    return ["The answer never says Current Procedural Terminology (the American Medical Association's codes for "
            "medical procedures and services): it is an invention, told in a confident voice. A model fluent in "
            "English but without the facts makes them up; the rest of the course measures how far a prompt, "
            "retrieval and fine-tuning each close that gap."]


def answer_findings(expected: str, answer: str | None) -> list[str]:
    """One answer against the expected one: right, a wrong code in the right format, or not in the format."""
    want, got = parse_answer(expected), parse_answer(answer)
    if got is None:
        return [f"The answer is not in the format `{ANSWER_FORM}`, so no code can be read from it."]
    if (answer or "").strip() == expected.strip():
        return ["The answer is exactly the expected one, code and description."]
    known = {c.code: c.description for c in load_codes()}
    if got[0] == want[0]:
        return [f"The code is right ({got[0]}); the description differs from the table's \"{want[1]}\"."]
    what = f"a real code of the table ({known[got[0]]})" if got[0] in known else "a code that is not in the table"
    return [f"Wrong code: {got[0]}, {what}, where {want[0]} was expected, in the right format. One request says "
            "little either way; notebook 04 scores every held-out request."]


def same_description(a: str, b: str) -> bool:
    """Two descriptions say the same, ignoring case, punctuation and spacing."""
    words = lambda text: re.findall(r"[a-z0-9]+", text.lower())  # noqa: E731
    return words(a) == words(b)


def parse_answer(text: str | None) -> tuple[str, str] | None:
    """``(code, description)`` when ``text`` is exactly in the answer format, else None."""
    match = ANSWER_PATTERN.match((text or "").strip())
    return (match.group(2), match.group(1).strip()) if match else None


@lru_cache(maxsize=1)
def load_codes() -> tuple[CptCode, ...]:
    source = json.loads((BILLING_DIR / "cpt_source.json").read_text(encoding="utf-8"))
    return tuple(CptCode(c["code"], c["description"], c["category"], c["in_training"], tuple(c["phrases"]))
                 for c in source["codes"])


def all_answers(messages: list[dict] | None = None) -> list[str]:
    """Every code of the table written as its answer: the choices of a model constrained to the whole table (the
    request's ``messages`` are not needed; the argument lets it stand where a per-request choice is expected)."""
    return [c.answer for c in load_codes()]


def code_reference(codes: tuple[CptCode, ...] | None = None) -> str:
    """The code table as prompt text (the RAG/teacher reference), one code a line written as its answer is
    (``Description - CPT Code: NNNNN``), so that answering from it is copying a line."""
    return "\n".join(c.answer for c in (codes or load_codes()))


def chat_example(procedure: str, answer: str | None = None, system_prompt: str = SYSTEM_PROMPT) -> dict:
    """A chat example (or, without ``answer``, a request's messages) for one procedure."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": procedure}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def _typo(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if rng.random() < 0.5 else w[:j] + w[j + 1:]
    return " ".join(words)


def _render(phrase: str, rng: random.Random) -> str:
    sex = rng.choice("MF")
    text = rng.choice(FRAMES).format(p=phrase, age=rng.randint(19, 88), sex=sex,
                                     sexword="male" if sex == "M" else "female", setting=rng.choice(SETTINGS))
    roll = rng.random()
    if roll < 0.25:
        text = _typo(text, rng)
    elif roll < 0.40:
        text = text.lower()
    elif roll < 0.44:
        text = text.upper()
    return text


def _draw(phrases: tuple[str, ...], n: int, rng: random.Random, seen: set[str]) -> list[str]:
    """``n`` new user messages cycling through ``phrases``, none already in ``seen``."""
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        phrase = phrases[len(out) % len(phrases)]
        text = _render(phrase, rng)
        attempts += 1
        if attempts > 1000 * n:
            raise RuntimeError(f"cannot draw {n} distinct messages from {phrases}")
        key = duplicate_key(text)
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


def build_datasets(seed: int = SEED) -> dict[str, list[dict]]:
    """Every split as a list of JSON objects (deterministic for a given seed), plus the pool's answer key."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_SIZES}
    for code in load_codes():
        if not code.in_training:
            for text in _draw(code.phrases, SPLIT_SIZES["test_new_codes"], rng, seen):
                splits["test_new_codes"].append(chat_example(text, code.answer))
            continue
        train_phrases, held_out = code.phrases[:TRAIN_PHRASES], code.phrases[TRAIN_PHRASES:]
        for name, phrases in (("train", train_phrases), ("validation", held_out), ("test", held_out)):
            for text in _draw(phrases, SPLIT_SIZES[name], rng, seen):
                splits[name].append(chat_example(text, code.answer))
        for text in _draw(train_phrases, SPLIT_SIZES["pool"], rng, seen):
            splits["pool"].append({"procedure": text, "code": code.code})
    for name in splits:
        rng.shuffle(splits[name])
    pool = [{"id": f"pool-{i:04d}", **item} for i, item in enumerate(splits["pool"], start=1)]
    splits["pool"] = [{"id": item["id"], "procedure": item["procedure"]} for item in pool]
    splits["pool_answers"] = [{"id": item["id"], "code": item["code"]} for item in pool]
    return splits


def pool_answers() -> dict[str, str]:
    """The pool's answer key: pool id -> the code its request was written for (for measuring a teacher only)."""
    lines = (BILLING_DIR / "pool_answers.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["id"]: row["code"] for row in map(json.loads, lines)}


def flawed_lines() -> list[bytes]:
    """A teaching file: each line breaks one rule (see data/billing/README.md for the list)."""
    good = [chat_example(f"Please code: {c.phrases[0]}", c.answer) for c in load_codes()[:8]]
    dump = lambda obj: json.dumps(obj, ensure_ascii=False).encode()  # noqa: E731
    lookup_tool = [{"type": "function", "function": {"name": "lookup_code", "description": "Look up a CPT code.",
                     "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "What to look up"}}}}}]
    return [
        dump(good[0]),
        dump(good[1]),
        dump(good[1]),                                                                  # exact duplicate
        dump({"messages": good[2]["messages"][:2]}),                                    # no assistant reply
        b'{"messages": [{"role": "user", "content": "lipid panel"}, {"role": "assistant", "content": "Lipid panel - CPT Code: 80061"}',  # truncated JSON
        dump({"messages": [{"role": "human", "content": "CBC"}, {"role": "assistant", "content": "Complete blood count with automated differential - CPT Code: 85025"}]}),  # bad role
        dump({"messages": [*good[3]["messages"][:2], {**good[3]["messages"][2], "weight": 0.5}]}),                 # weight not 0/1
        dump({"messages": [{**good[4]["messages"][0], "weight": 1}, *good[4]["messages"][1:]]}),                  # weight on system
        b"",                                                                            # blank line in the middle
        dump({"messages": [*good[5]["messages"][:2], {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup_code", "arguments": "{query: TSH}"}}]}]}),  # arguments not JSON
        dump({"messages": [*good[6]["messages"][:2], {"role": "tool", "tool_call_id": "call_9", "content": "84443"},
                           good[6]["messages"][2]]}),                                   # tool answers no call
        dump({"messages": [good[7]["messages"][0], {"role": "user", "content": 80053},
                           good[7]["messages"][2]]}),                                   # content is a number
        dump({"messages": [{**good[0]["messages"][1], "name": "Dr Smith"}, good[0]["messages"][2]]}),            # name with a space
        dump({"messages": [good[2]["messages"][1], {**good[2]["messages"][2], "confidence": 0.9}]}),             # unknown key
        "Procedure: venipuncture — CPT 36415".encode("cp1252"),                        # not UTF-8
        dump({"input": {"messages": [good[0]["messages"][1]]}, "preferred_output": [good[0]["messages"][2]],
              "non_preferred_output": [{"role": "assistant", "content": "36415"}]}),    # DPO line in a chat file
        dump(["CBC", "85025"]),                                                         # not an object
        dump({"messages": [*good[5]["messages"][:2], {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup_code", "arguments": "{\"query\": \"TSH\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Thyroid stimulating hormone (TSH) - CPT Code: 84443"},
            {"role": "assistant", "content": "Thyroid stimulating hormone (TSH) - CPT Code: 84443"}], "tools": lookup_tool}),  # valid tool use
    ]


def write_datasets(out_dir: Path = BILLING_DIR, seed: int = SEED) -> dict[str, int]:
    """Write every split (and the flawed file) as JSONL into ``out_dir``; return line counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in build_datasets(seed).items():
        write_jsonl(rows, out_dir / f"{name}.jsonl")
        counts[name] = len(rows)
    lines = flawed_lines()
    (out_dir / "flawed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    counts["flawed"] = len(lines)
    return counts
