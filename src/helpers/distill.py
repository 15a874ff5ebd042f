"""Distillation: a teacher labels unlabeled requests, we collect its stored answers, keep the good ones,
and write a training file for a smaller or cheaper student.

The teacher's answers are collected the way OpenAI's API offers without a dashboard: each request is sent
with ``store=True`` and ``metadata`` (the run and the pool item), then read back with
``chat.completions.list(model=..., metadata={"run": ...})``.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from helpers.billing import chat_example, format_answer, load_codes, parse_answer


def label_pool(client, teacher: str, pool: list[dict], run_id: str, *, k: int = 5, max_tokens: int = 32,
               concurrency: int = 8) -> int:
    """Ask the teacher about every pool item (with ``k`` retrieved candidate codes in its prompt), each answer
    stored with metadata ``{"run", "pool_id"}``; returns how many."""
    from helpers.retrieval import rag_system_prompt

    def one(item: dict) -> None:
        client.chat.completions.create(
            model=teacher, max_tokens=max_tokens, temperature=0, store=True, metadata={"run": run_id, "pool_id": item["id"]},
            messages=[{"role": "system", "content": rag_system_prompt(item["procedure"], k)}, {"role": "user", "content": item["procedure"]}])

    with ThreadPoolExecutor(concurrency) as pool_executor:
        list(pool_executor.map(one, pool))
    return len(pool)


def collect(client, teacher: str, run_id: str) -> pd.DataFrame:
    """The teacher's stored answers for a run, read back page by page."""
    rows, after = [], None
    while True:
        page = client.chat.completions.list(model=teacher, metadata={"run": run_id}, limit=100, **({"after": after} if after else {}))
        for completion in page.data:
            rows.append({"pool_id": completion.metadata["pool_id"], "answer": completion.choices[0].message.content or "",
                         "completion_id": completion.id})
        if not page.has_more:
            break
        after = page.data[-1].id
    return pd.DataFrame(rows, columns=["pool_id", "answer", "completion_id"])


MIN_KEPT = 10  # OpenAI's minimum training file


def filter_answers(answers: pd.DataFrame, pool: list[dict], k: int = 5) -> pd.DataFrame:
    """Mark each answer: in the answer format, a code that exists, and a code that retrieval also proposes
    for that request (two independent sources agree). Kept answers get the code table's description."""
    from helpers.retrieval import retrieve

    table = {c.code: c.description for c in load_codes()}
    requests = {item["id"]: item["procedure"] for item in pool}
    parsed = answers["answer"].map(parse_answer)
    out = answers.assign(
        format_ok=parsed.notna(),
        known_code=parsed.map(lambda p: p is not None and p[0] in table),
        agrees_with_retrieval=[p is not None and p[0] in {c.code for c in retrieve(requests[pid], k)}
                               for p, pid in zip(parsed, answers["pool_id"])],
        description_fixed=parsed.map(lambda p: p is not None and p[0] in table and table[p[0]] != p[1]))
    out = out.assign(keep=out["format_ok"] & out["known_code"] & out["agrees_with_retrieval"])
    out["answer"] = [format_answer(p[0], table[p[0]]) if keep else a for p, keep, a in zip(parsed, out["keep"], out["answer"])]
    return out


def require_enough(kept: pd.DataFrame) -> None:
    if len(kept) < MIN_KEPT:
        raise ValueError(f"Only {len(kept)} teacher answers passed the filter; a training file needs at least {MIN_KEPT}. "
                         "Train a stronger teacher in 03_training (more examples or epochs), or raise N_POOL.")


def student_file(kept: pd.DataFrame, pool: list[dict], path: Path, system_prompt: str) -> int:
    """A chat training file: the pool request (short prompt) and the teacher's answer."""
    by_id = {item["id"]: item["procedure"] for item in pool}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in kept.itertuples():
            handle.write(json.dumps(chat_example(by_id[row.pool_id], row.answer.strip(), system_prompt), ensure_ascii=False) + "\n")
    return len(kept)


def comparison_findings(comparison: dict[str, dict]) -> list[str]:
    """What notebook 05's comparison shows, in sentences computed from it (``comparison``: teacher, student base,
    student, each a summary from ``helpers.evaluation.summarize``)."""
    teacher, base, student = comparison["teacher"], comparison["student base"], comparison["student"]
    share = student["code_accuracy"] / teacher["code_accuracy"] if teacher["code_accuracy"] else float("nan")
    cost = student["usd_per_1000_queries"] / teacher["usd_per_1000_queries"]
    lines = [f"On {int(student['n'])} held-out requests the student names the right code {student['code_accuracy']:.0%} "
             f"of the time (95% CI {student['code_accuracy_ci_low']:.0%}-{student['code_accuracy_ci_high']:.0%}), the "
             f"teacher {teacher['code_accuracy']:.0%} ({teacher['code_accuracy_ci_low']:.0%}-{teacher['code_accuracy_ci_high']:.0%}), "
             f"the student's base {base['code_accuracy']:.0%}.",
             f"The student keeps {share:.0%} of the teacher's accuracy at {cost:.0%} of its price per 1,000 queries "
             f"(${student['usd_per_1000_queries']:.4f} against ${teacher['usd_per_1000_queries']:.4f}), with "
             f"{student['input_tokens']:.0f} input tokens a request against the teacher's {teacher['input_tokens']:.0f}."]
    if share >= 0.9:
        lines.append("Distillation worked here: nearly the teacher's accuracy at a fraction of its price.")
    elif student["code_accuracy"] > base["code_accuracy"]:
        lines.append("The student learned from the teacher (it beats its base) but falls short of it at these settings: "
                     "more labelled requests (`N_POOL`) or epochs close the gap, at a cost you can now weigh.")
    else:
        lines.append("The student did not learn the task from the teacher's answers at these settings.")
    return lines
