"""Distillation: a teacher labels unlabeled requests, we collect its stored answers, keep the good ones,
and write a training file for a smaller or cheaper student.

The teacher's answers are collected the way OpenAI's API offers without a dashboard: each request is sent
with ``store=True`` and ``metadata`` (the run and the pool item), then read back with
``chat.completions.list(model=..., metadata={"run": ...})``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from helpers.course.billing import chat_example, format_answer, load_codes, parse_answer, same_description
from helpers.course.sending import send_all


def label_pool(client, teacher: str, pool: list[dict], run_id: str, *, k: int = 5, max_tokens: int = 32,
               concurrency: int = 16) -> int:
    """Ask the teacher about every pool item (with ``k`` retrieved candidate codes in its prompt), each answer
    stored with metadata ``{"run", "pool_id"}``; returns how many."""
    from helpers.course.retrieval import rag_system_prompt

    def one(item: dict) -> None:
        client.chat.completions.create(
            model=teacher, max_tokens=max_tokens, temperature=0, store=True, metadata={"run": run_id, "pool_id": item["id"]},
            messages=[{"role": "system", "content": rag_system_prompt(item["procedure"], k)}, {"role": "user", "content": item["procedure"]}])

    send_all(one, pool, concurrency)
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


def filter_answers(answers: pd.DataFrame) -> pd.DataFrame:
    """Mark each answer: in the answer format, a code that exists, and a description that is the code table's
    description of that code (ignoring case and punctuation). The last check does not ask retrieval again (the
    teacher saw the retrieved codes in its prompt); it catches an answer that joins one code's number to
    another's description, the mistake a model makes when it mixes two candidates. Kept answers are rewritten
    in the code table's exact words."""
    table = {c.code: c.description for c in load_codes()}
    parsed = answers["answer"].map(parse_answer)
    out = answers.assign(
        format_ok=parsed.notna(),
        known_code=parsed.map(lambda p: p is not None and p[0] in table),
        description_matches_code=parsed.map(lambda p: p is not None and p[0] in table and same_description(p[1], table[p[0]])),
        code=parsed.map(lambda p: p[0] if p is not None else ""))
    out = out.assign(keep=out["format_ok"] & out["known_code"] & out["description_matches_code"])
    out["answer"] = [format_answer(p[0], table[p[0]]) if keep else a for p, keep, a in zip(parsed, out["keep"], out["answer"])]
    return out


def label_accuracy(checked: pd.DataFrame, answer_key: dict[str, str]) -> pd.DataFrame:
    """How often the teacher's code is the one the request was written for, over every answer and over the kept
    ones (``checked`` from :func:`filter_answers`; ``answer_key``: pool id -> code, never shown to a model)."""
    right = checked["code"] == checked["pool_id"].map(answer_key)
    rows = {}
    for name, mask in (("every answer", pd.Series(True, index=checked.index)), ("kept by the filter", checked["keep"]),
                       ("dropped by the filter", ~checked["keep"])):
        n, hits = int(mask.sum()), int((right & mask).sum())
        rows[name] = {"answers": n, "right code": hits, "label accuracy": hits / n if n else float("nan")}
    return pd.DataFrame.from_dict(rows, orient="index")


def filter_findings(labels: dict[str, dict]) -> list[str]:
    """What the filter did to the teacher's labels, in sentences computed from :func:`label_accuracy`'s table
    (as a dict: row -> column -> value)."""
    every, kept, dropped = labels["every answer"], labels["kept by the filter"], labels["dropped by the filter"]
    lines = [f"The teacher named the right code for {every['right code']} of {every['answers']} pool requests "
             f"({every['label accuracy']:.0%}, checked against the pool's answer key, which no model sees)."]
    if not dropped["answers"]:
        return lines + ["The filter dropped nothing here, so it cannot have changed the labels' accuracy."]
    lines.append(f"The filter dropped {dropped['answers']} answers, {dropped['answers'] - dropped['right code']} of them wrong "
                 f"and {dropped['right code']} right.")
    if kept["label accuracy"] > every["label accuracy"]:
        lines.append(f"So the student trains on labels that are right {kept['label accuracy']:.0%} of the time instead of "
                     f"{every['label accuracy']:.0%}: fewer examples, fewer mistakes to copy.")
    else:
        lines.append(f"The kept labels are right {kept['label accuracy']:.0%} of the time, no better than all of them "
                     f"({every['label accuracy']:.0%}): here the filter only cost examples.")
    return lines


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
    student, each a summary from ``helpers.course.evaluation.summarize``)."""
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
    if share > 1:
        tie = student["code_accuracy_ci_low"] <= teacher["code_accuracy_ci_high"]
        lines.append("Distillation worked here: the student is more accurate than its teacher on this sample, at a fraction "
                     "of its price. " + ("The two 95% intervals overlap, so read it as a tie." if tie else
                                         "It learned from the filtered answers (3.2), not from the teacher's mistakes."))
    elif share >= 0.9:
        lines.append("Distillation worked here: nearly the teacher's accuracy at a fraction of its price.")
    elif student["code_accuracy"] > base["code_accuracy"]:
        lines.append("The student learned from the teacher (it beats its base) but falls short of it at these settings: "
                     "more labelled requests (`N_POOL`) or epochs close the gap, at a cost you can now weigh.")
    else:
        lines.append("The student did not learn the task from the teacher's answers at these settings.")
    return lines


# OpenAI Cookbook, "Leveraging model distillation to fine-tune a model" (wine grape varieties, 300 held-out
# reviews): https://developers.openai.com/cookbook/examples/leveraging_model_distillation_to_fine-tune_a_model
COOKBOOK_DISTILLATION = {"teacher": ("gpt-4o", 0.7967), "student base": ("gpt-4o-mini", 0.6467),
                         "student": ("distilled gpt-4o-mini", 0.7933)}


def cookbook_findings(comparison: dict[str, dict]) -> list[str]:
    """This run's distillation set beside OpenAI Cookbook's published one, and the course outline's (the seed's)
    "the student can sometimes even beat the teacher" checked against this run (sentences computed from ``comparison``)."""
    (t_name, t_acc), (b_name, b_acc), (s_name, s_acc) = (COOKBOOK_DISTILLATION[k] for k in ("teacher", "student base", "student"))
    teacher, base, student = (comparison[k]["code_accuracy"] for k in ("teacher", "student base", "student"))
    here = f"{student / teacher:.1%}" if teacher else "none (the teacher scored 0)"
    lines = [f"OpenAI's Cookbook distils {t_name} ({t_acc:.1%}) into {b_name} ({b_acc:.1%} before, {s_acc:.1%} as the "
             f"distilled student): the student keeps {s_acc / t_acc:.1%} of its teacher's accuracy and gains {100 * (s_acc - b_acc):.0f} points "
             f"over its base. Here the student keeps {here} of the teacher's and gains {100 * (student - base):.0f} points "
             "over its base."]
    if student > teacher:
        lines.append("The course outline says the student can sometimes even beat the teacher, and here it did; check the confidence "
                     "intervals above before you believe a small lead.")
    elif student == teacher:
        lines.append(f"The course outline says the student can sometimes even beat the teacher; here the two tied ({student:.0%}), "
                     "which on this many requests says only that the student caught up.")
    else:
        lines.append("The course outline says the student can sometimes even beat the teacher; not here, and not in the Cookbook either "
                     f"({s_acc:.1%} against {t_acc:.1%}). A student learns to answer as its teacher did; it can pass it only where "
                     "training on filtered answers corrects what the teacher gets wrong.")
    return lines
