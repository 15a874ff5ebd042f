"""Notebook 11: a fine-tuned model taken home to llama.cpp (and Ollama), answering as it did on the server.

The export itself is the server's tool (``workbook export --format gguf``); this runs what it wrote in llama.cpp
(llama-cpp-python, the library llama.cpp's own tools are built on), side by side with the server, and shows what the
chat template and the end-of-turn token do by taking each away.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.course import billing

# Every core, at most 4 (measured only on 2 cores; a 135M model's steps are short). Measured on 2 cores with nothing else computing
# (2026-12-06): 16 held-out answers took 7.5 s with two threads against 13.3 s with one (f16; q8_0 4.9 against 8.4 s).
# Beside another computing process one thread is steadier (2026-12-04: 55-60 tokens/s where two collapsed): pass
# ``threads=1`` there.
LLAMA_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
LLAMA_CONTEXT = 2048
#: Another family's chat template, as a runtime configured for another model writes the chat: llama-cpp-python's
#: name for Llama 2's (``[INST] <<SYS>> ... <</SYS>> ... [/INST]``)
WRONG_TEMPLATE = "llama-2"


class LlamaCppMissing(RuntimeError):
    """llama-cpp-python is not installed in this kernel's environment."""


class ExportFailed(LookupError):
    """``workbook export`` refused (no such model of yours) or failed; the message is the command's own."""


def export(model: str, target: Path, format: str = "gguf", quant: str = "f16") -> dict[str, Any]:
    """``workbook export MODEL --format FORMAT --quant QUANT --out TARGET`` (the server's own tool: the course never
    reads the server's store itself); returns its ``take_home.json``."""
    done = subprocess.run([sys.executable, "-m", "helpers.cli", "export", model, "--format", format, "--quant", quant,
                           "--out", str(target)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise ExportFailed(done.stderr.strip().removeprefix("workbook export: "))
    return json.loads((Path(target) / "take_home.json").read_text(encoding="utf-8"))


def sizes(folders: dict[str, Path]) -> pd.DataFrame:
    """The files of each export and their sizes in MB (the scratch folders of an export left out)."""
    rows = [{"export": name, "file": p.name, "MB": round(p.stat().st_size / 1e6, 1)}
            for name, folder in folders.items() for p in sorted(Path(folder).iterdir()) if p.is_file()]
    return pd.DataFrame(rows)


def load(path: Path | str, lora: Path | None = None, threads: int = LLAMA_THREADS, chat_format: str | None = None):
    """A GGUF model in llama.cpp (and a GGUF LoRA adapter on it). It writes chats in the template the file carries,
    unless ``chat_format`` names another."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise LlamaCppMissing(f"llama-cpp-python is not installed ({exc}): run `make setup`, which builds it.") from None
    return Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=LLAMA_CONTEXT, n_threads=threads,
                 n_threads_batch=threads, seed=0, verbose=False, chat_format=chat_format)


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str
    tokens: int
    seconds: float
    prompt_tokens: int = 0


def chat(llm, messages: list[dict], max_tokens: int = 32, **extra: Any) -> Reply:
    """A greedy chat answer from llama.cpp, in the chat template the GGUF file carries."""
    started = time.perf_counter()
    out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, **extra)
    seconds = time.perf_counter() - started
    choice, usage = out["choices"][0], out["usage"]
    return Reply((choice["message"]["content"] or "").strip(), choice["finish_reason"], usage["completion_tokens"], seconds,
                 usage["prompt_tokens"])


def side_by_side(llms: dict[str, Any], client, model: str, examples: list[dict], max_tokens: int = 32,
                 prompt=None) -> pd.DataFrame:
    """Each example's request (rewritten by ``prompt``, as notebook 04's are) answered by the server (``model``) and
    by each llama.cpp model, one at a time: the answers, whether each is the server's, times and tokens, and the
    expected answer."""
    rows = []
    for example in examples:
        messages = example["messages"][:-1]
        messages = prompt(messages) if prompt else messages
        started = time.perf_counter()
        served = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        row: dict[str, Any] = {"request": example["messages"][-2]["content"], "expected": example["messages"][-1]["content"],
                               "server": (served.choices[0].message.content or "").strip(), "server s": time.perf_counter() - started,
                               "server tokens": served.usage.completion_tokens, "server prompt tokens": served.usage.prompt_tokens}
        for name, llm in llms.items():
            reply = chat(llm, messages, max_tokens)
            row |= {name: reply.text, f"{name} same": reply.text == row["server"], f"{name} s": reply.seconds,
                    f"{name} tokens": reply.tokens, f"{name} prompt tokens": reply.prompt_tokens}
        rows.append(row)
    return pd.DataFrame(rows)


def agreement(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per runtime: answers identical to the server's, code accuracy of its answers against the requests' answers
    (when the table has an ``expected`` column), and tokens per second, one answer at a time."""
    rows = {}
    runtimes = [("server", "server s", "server tokens")] + [(n, f"{n} s", f"{n} tokens") for n in names]
    for name, seconds, tokens in runtimes:
        row = {"same as the server": int(table[f"{name} same"].sum()) if name != "server" else len(table),
               "of": len(table), "tokens/s": round(table[tokens].sum() / max(table[seconds].sum(), 1e-9), 1),
               "s per answer (p50)": round(float(table[seconds].median()), 3),
               "prompt tokens": round(float(table[f"{name} prompt tokens"].mean()), 1)}
        if "expected" in table:
            right = [code_of(a) is not None and code_of(a) == code_of(e) for a, e in zip(table[name], table["expected"])]
            row["code accuracy"] = round(sum(right) / max(len(right), 1), 3)
        rows[name] = row
    return pd.DataFrame(rows).T


def code_of(answer: str) -> str | None:
    """The code of an answer in the billing system's form (None for any other answer), as notebook 04 scores it."""
    parsed = billing.parse_answer(answer)
    return parsed[0] if parsed else None


def timings(llm, examples: list[dict], max_tokens: int = 32, prompt=None) -> dict[str, float]:
    """llama.cpp alone on each example's request (rewritten by ``prompt``), one at a time: seconds per answer (p50),
    tokens/s, mean prompt tokens, and code accuracy."""
    replies, right = [], 0
    for example in examples:
        messages = example["messages"][:-1]
        reply = chat(llm, prompt(messages) if prompt else messages, max_tokens)
        replies.append(reply)
        right += code_of(reply.text) is not None and code_of(reply.text) == code_of(example["messages"][-1]["content"])
    seconds = pd.Series([r.seconds for r in replies])
    return {"s per answer (p50)": round(float(seconds.median()), 3),
            "tokens/s": round(sum(r.tokens for r in replies) / max(float(seconds.sum()), 1e-9), 1),
            "prompt tokens": round(sum(r.prompt_tokens for r in replies) / max(len(replies), 1), 1),
            "code accuracy": round(right / max(len(replies), 1), 3)}


def gguf_metadata(path: Path) -> dict[str, Any]:
    """What a GGUF file says about how to chat with it: its chat template, end-of-turn token, architecture and size
    (read with the ``gguf`` package, as llama.cpp reads them)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(name: str) -> Any:
        found = reader.fields.get(name)
        return found.contents() if found is not None else None

    tokens = field("tokenizer.ggml.tokens") or []
    eos = field("tokenizer.ggml.eos_token_id")
    return {"architecture": field("general.architecture"), "chat template": field("tokenizer.chat_template"),
            "end-of-turn token": tokens[eos] if eos is not None and eos < len(tokens) else None, "eos id": eos,
            "tensors": len(reader.tensors), "file type": field("general.file_type")}


def without_stop(llm, messages: list[dict], max_tokens: int) -> Reply:
    """The right template, but the end-of-turn token never chosen (its logit pushed to minus infinity): what a runtime
    that does not know the model's stop token does."""
    return chat(llm, messages, max_tokens, logit_bias={llm.token_eos(): -math.inf})


def template_lesson(path: Path, examples: list[dict], max_tokens: int) -> pd.DataFrame:
    """Each example's request three ways, in llama.cpp: as exported (the file's template and stop token); in another
    family's template (``WRONG_TEMPLATE``); without the stop token. How each ended (``stop``: the model ended its turn;
    ``length``: it ran to ``max_tokens``), whether the answer is in the billing system's form, the same as exported,
    and the right code."""
    exported, wrong = load(path), load(path, chat_format=WRONG_TEMPLATE)
    rows = []
    for example in examples:
        messages, expected = example["messages"][:-1], code_of(example["messages"][-1]["content"])
        reference = chat(exported, messages, max_tokens)
        for way, reply in (("as exported", reference), ("another model's template", chat(wrong, messages, max_tokens)),
                           ("no stop token", without_stop(exported, messages, max_tokens))):
            rows.append({"request": messages[-1]["content"], "way": way, "answer": reply.text, "finish": reply.finish_reason,
                         "tokens": reply.tokens, "in form": code_of(reply.text) is not None,
                         "same as exported": reply.text == reference.text, "right code": code_of(reply.text) == expected})
    return pd.DataFrame(rows)


def template_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per way: answers, in form, the same as exported, with the right code, stopped by themselves, mean tokens."""
    return table.groupby("way", sort=False).agg(answers=("answer", "size"), in_form=("in form", "sum"),
                                                same_as_exported=("same as exported", "sum"), right_code=("right code", "sum"),
                                                stopped=("finish", lambda f: int((f == "stop").sum())),
                                                mean_tokens=("tokens", "mean")).round(1)


def _count(n: int, of: int) -> str:
    return f"{n} of {of}"


def agreement_findings(table: dict[str, dict[str, Any]]) -> list[str]:
    """Sentences from :func:`agreement`'s table (``to_dict(orient="index")``): how many answers each GGUF shared with
    the server, the accuracy difference, and the speed ratio."""
    server = table["server"]
    lines = []
    for name, row in table.items():
        if name == "server":
            continue
        what = "the adapter alone on the Q4_1 file the server's base came from" if "adapter" in name else f"the {name} file"
        line = f"llama.cpp with {what} gave the server's answer, word for word, to {_count(int(row['same as the server']), int(row['of']))} requests"
        if "code accuracy" in row:
            diff = row["code accuracy"] - server["code accuracy"]
            line += (f"; its code accuracy is {row['code accuracy']:.3f} against the server's {server['code accuracy']:.3f} "
                     f"({'the same' if abs(diff) < 1e-9 else f'{diff:+.3f}'})")
        ratio = row["tokens/s"] / max(server["tokens/s"], 1e-9)
        lines.append(line + f", at {row['tokens/s']:.0f} tokens/s one request at a time against the server's "
                     f"{server['tokens/s']:.0f} ({ratio:.1f}x).")
    identical = [name for name, row in table.items() if name != "server" and row["same as the server"] == row["of"]]
    if identical:
        lines.append(f"Identical answers ({', '.join(identical)}) mean the same weights, template and stop token: the export "
                     "changed where the model runs, not what it says.")
    parted = [name for name, row in table.items() if name != "server" and row["same as the server"] < row["of"]]
    if parted:
        lines.append(f"Where {', '.join(parted)} parted from the server, the file's rounded weights tipped a near-tie between two "
                     "next tokens (the tests check each such token is the server's runner-up): smaller files round more.")
    return lines


def speed_findings(teacher: dict[str, Any], student: dict[str, Any]) -> list[str]:
    """The teacher (with its retrieved codes) against the student (one-line prompt) in llama.cpp: latency per answer
    and prompt length, from two :func:`agreement` rows plus their prompt tokens."""
    faster = teacher["s per answer (p50)"] / max(student["s per answer (p50)"], 1e-9)
    return [f"In llama.cpp on this CPU the distilled student answered in {student['s per answer (p50)']:.2f} s (p50) with "
            f"{student['prompt tokens']:.0f} prompt tokens; the teacher, which needs the retrieved codes in its prompt, in "
            f"{teacher['s per answer (p50)']:.2f} s with {teacher['prompt tokens']:.0f}: "
            + (f"the student is {faster:.1f}x faster." if faster >= 1.05 else "no faster here."),
            "Locally both are the same 135M model, so the difference is the prompt alone; on OpenAI the student is also a "
            "smaller model (gpt-4.1-nano against gpt-4.1), which is where most of the seed's \"Fast\" comes from."]


def template_findings(summary: dict[str, dict[str, Any]], max_tokens: int) -> list[str]:
    """Sentences from :func:`template_summary` (``to_dict(orient="index")``)."""
    def part(way: str) -> str:
        row = summary[way]
        return (f"{_count(int(row['in_form']), int(row['answers']))} answers in the billing form, {int(row['right_code'])} with the "
                f"right code, {int(row['stopped'])} stopped by themselves ({row['mean_tokens']:.1f} tokens on average)")

    lines = [f"As exported (the file's own template and stop token): {part('as exported')}."]
    for way, what in (("another model's template", f"Written in another family's template (llama-cpp-python's `{WRONG_TEMPLATE}`)"),
                      ("no stop token", "With the right template but without the stop token")):
        row = summary[way]
        ran_on = int(row["answers"]) - int(row["stopped"])
        lines.append(f"{what}: {part(way)}; {int(row['same_as_exported'])} the same as exported"
                     + (f"; {ran_on} ran on to the {max_tokens}-token limit." if ran_on else "."))
    return lines
