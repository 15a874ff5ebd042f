"""Notebook 12's parts: the billing grader (the code checked by ``string_check``, the form by a ``python`` grader,
combined by ``multi``), prompt files as reinforcement fine-tuning takes them, how many prompts a model can learn from
(a group of its answers that score differently), the reward curves a job reports, and the sentences that compare it
with supervised fine-tuning on the same prompts, computed from the numbers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.course.billing import ANSWER_PATTERN
from helpers.course.evaluation import wilson_interval

#: the form check, run by the server in a sandboxed process (it sees the answer and the row, nothing else)
FORM_SOURCE = """import re

def grade(sample, item):
    return 1.0 if re.fullmatch(r"\\S.*? - CPT Code: \\d{5}", sample["output_text"].strip()) else 0.0
"""


def billing_grader(code_weight: float) -> dict[str, Any]:
    """A ``multi`` grader: ``code_weight`` for the right code (the answer holds "CPT Code: " and the row's code), the
    rest for the form the billing system reads."""
    if not 0 <= code_weight <= 1:
        raise ValueError(f"CODE_WEIGHT must be between 0 and 1, got {code_weight}.")
    return {"type": "multi", "name": "billing", "calculate_output": f"{code_weight:g} * code + {1 - code_weight:g} * form",
            "graders": {
                "code": {"type": "string_check", "name": "code", "input": "{{ sample.output_text }}",
                         "reference": "CPT Code: {{ item.code }}", "operation": "ilike"},
                "form": {"type": "python", "name": "form", "source": FORM_SOURCE}}}


def expected_code(row: dict[str, Any]) -> str:
    """The code of a course example's answer."""
    match = ANSWER_PATTERN.match(row["messages"][-1]["content"].strip())
    if not match:
        raise ValueError(f"not an answer in the course's form: {row['messages'][-1]['content']!r}")
    return match.group(2)


def write_prompts(rows: list[dict[str, Any]], path: Path) -> Path:
    """Course examples as reinforcement prompts: the conversation up to the user's turn, and the code the grader reads
    as ``item.code``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": r["messages"][:-1], "code": expected_code(r)}) + "\n" for r in rows))
    return path


def sample_rewards(client, model: str, rows: list[dict[str, Any]], grader: dict[str, Any], k: int,
                   max_tokens: int = 32, temperature: float = 0.7) -> pd.DataFrame:
    """``k`` sampled answers to each row's request (as a reinforcement job samples them), each scored by ``grader``
    through the server's ``graders.run``: one row per answer."""
    out = []
    for i, row in enumerate(rows):
        reply = client.chat.completions.create(model=model, messages=row["messages"][:-1], n=k, max_tokens=max_tokens,
                                               temperature=temperature)
        item = {"code": expected_code(row)}
        for choice in reply.choices:
            text = choice.message.content or ""
            scored = client.fine_tuning.alpha.graders.run(grader=grader, model_sample=text, item=item)
            out.append({"prompt": i, "answer": text, "reward": scored.reward})
    return pd.DataFrame(out)


def learnable(samples: pd.DataFrame) -> dict[str, int]:
    """How many prompts' answers all scored alike (a group that teaches nothing) and how many differed."""
    spread = samples.groupby("prompt")["reward"].agg(lambda r: r.max() - r.min())
    alike = samples.groupby("prompt")["reward"].first()[spread < 1e-9]
    return {"prompts": int(len(spread)), "answers differ": int((spread >= 1e-9).sum()),
            "all right": int((alike >= 1 - 1e-9).sum()), "all alike, not right": int((alike < 1 - 1e-9).sum())}


def reward_curves(client, job_id: str) -> pd.DataFrame:
    """A reinforcement job's per-step metrics, from its events: mean reward on training and validation prompts, KL to
    the starting model, answer length."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    rows = [e.data for e in events if e.type == "metrics" and e.data]
    columns = ["step", "train_reward_mean", "valid_reward_mean", "train_kl", "train_answer_tokens_mean", "train_grader_failures"]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    return frame.sort_values("step").set_index("step")


def compare_findings(table: dict[str, dict[str, Any]], start: str, ways: list[str]) -> list[str]:
    """Sentences from the held-out table (``name -> {"right", "n", "seconds"}``): each way's accuracy against the
    start's, with 95% intervals; a change is called one only where the intervals do not overlap."""
    first = table[start]
    low, high = wilson_interval(first["right"], first["n"])
    lines = [f"The starting model answered {first['right']} of {first['n']} held-out requests with the right code "
             f"({first['right'] / first['n']:.3f}, 95% interval {low:.3f}-{high:.3f})."]
    for way in ways:
        row = table[way]
        way_low, way_high = wilson_interval(row["right"], row["n"])
        diff = row["right"] - first["right"]
        moved = "more" if diff > 0 else "fewer"
        told = (f"{abs(diff)} {moved} right answers than the start" if diff else "as many right answers as the start")
        verdict = ("a change the intervals tell apart" if way_low > high or way_high < low
                   else "within the intervals: this run cannot tell it from no change")
        lines.append(f"After {way} ({row['seconds']:.0f} s of training): {row['right']} of {row['n']}, {told} "
                     f"(95% interval {way_low:.3f}-{way_high:.3f}; {verdict}).")
    return lines


def job_seconds(job) -> int:
    """A finished job's time from creation to finish, in seconds (its wait in the queue included: in this notebook
    each job is the only one)."""
    return int((job.finished_at or job.created_at) - job.created_at)
