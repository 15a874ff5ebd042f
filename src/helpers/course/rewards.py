"""Notebook 12's parts: the billing grader (the code checked by ``string_check``, the form by a ``python`` grader,
combined by ``multi``), prompt files as reinforcement fine-tuning takes them, how many prompts a model can learn from
(a group of its answers that score differently), the reward curves a job reports, and the sentences that compare it
with supervised fine-tuning on the same prompts, computed from the numbers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning.alpha import GraderRunResponse

from helpers.course.billing import parse_answer
from helpers.course.evaluation import wilson_interval
from helpers.course.sending import send_all

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
    parsed = parse_answer(row["messages"][-1]["content"])
    if parsed is None:
        raise ValueError(f"not an answer in the course's form: {row['messages'][-1]['content']!r}")
    return parsed[0]


def write_prompts(rows: list[dict[str, Any]], path: Path) -> Path:
    """Course examples as reinforcement prompts: the conversation up to the user's turn, and the code the grader reads
    as ``item.code``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": r["messages"][:-1], "code": expected_code(r)}) + "\n" for r in rows))
    return path


def sample_rewards(client, model: str, rows: list[dict[str, Any]], grader: dict[str, Any], k: int,
                   max_tokens: int = 32, temperature: float = 0.7, concurrency: int = 8) -> pd.DataFrame:
    """``k`` sampled answers to each row's request (as a reinforcement job samples them), each scored by ``grader``
    through the server's ``graders.run``: one row per answer. Requests go concurrently, so the local server generates
    them in batches (measured: 32 requests of 4 answers, 69 s one at a time)."""
    def one(i: int) -> list[dict[str, Any]]:
        row = rows[i]
        reply = client.chat.completions.create(model=model, messages=row["messages"][:-1], n=k, max_tokens=max_tokens,
                                               temperature=temperature)
        item = {"code": expected_code(row)}
        return [{"prompt": i, "answer": choice.message.content or "",
                 "reward": client.fine_tuning.alpha.graders.run(grader=grader, model_sample=choice.message.content or "",
                                                                item=item).reward}
                for choice in reply.choices]

    answered = send_all(one, range(len(rows)), concurrency, answers=(ChatCompletion, GraderRunResponse))
    return pd.DataFrame([answer for answers in answered for answer in answers])


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


def group_findings(groups: dict[str, int]) -> list[str]:
    """Sentences from ``learnable``'s counts: how many requests can teach a reinforcement job anything."""
    n, differ = groups["prompts"], groups["answers differ"]
    right, wrong = groups["all right"], groups["all alike, not right"]
    lines = [f"{differ} of {n} requests got answers that scored differently: only these teach a reinforcement job "
             f"anything. {right} were answered right every time and {wrong} got the same lower reward every time; "
             "their answers' advantages are all zero, so the job samples them for nothing."]
    if differ == 0:
        lines.append("No request can teach this model anything with this grader: start from a model that gets the "
                     "requests right only sometimes.")
    elif differ < n / 4:
        lines.append(f"With {differ} of {n}, expect little change from reinforcement here: a model that gets more "
                     "requests right only sometimes has more to learn from the same grader.")
    return lines


def curve_findings(curves: pd.DataFrame) -> list[str]:
    """Sentences from ``reward_curves``: the validation requests' mean reward at the first and last evaluation, and
    how far the model moved from where it started (KL)."""
    valid = curves["valid_reward_mean"].dropna()
    lines = []
    if len(valid):
        lines.append(f"Mean reward on the validation requests: {valid.iloc[0]:.2f} at step {valid.index[0]}, "
                     f"{valid.iloc[-1]:.2f} at step {valid.index[-1]} (a few requests: a small move is noise).")
    lines.append(f"KL to the starting model: at most {curves['train_kl'].max():.3f} per answer token.")
    return lines


def _verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    a_low, a_high = wilson_interval(a["right"], a["n"])
    b_low, b_high = wilson_interval(b["right"], b["n"])
    return ("a change the intervals tell apart" if a_low > b_high or a_high < b_low
            else "within the intervals: this run cannot tell it from no change")


def _told(diff: int, than: str) -> str:
    return f"{abs(diff)} {'more' if diff > 0 else 'fewer'} right answers than {than}" if diff else f"as many right answers as {than}"


def compare_findings(table: dict[str, dict[str, Any]], start: str, ways: list[str]) -> list[str]:
    """Sentences from the held-out table (``name -> {"right", "n", "seconds"}``): each way's accuracy against the
    start's, and the first way's against the second's, with 95% intervals and training times; a change is called one
    only where the intervals do not overlap."""
    first = table[start]
    low, high = wilson_interval(first["right"], first["n"])
    lines = [f"The starting model answered {first['right']} of {first['n']} held-out requests with the right code "
             f"({first['right'] / first['n']:.3f}, 95% interval {low:.3f}-{high:.3f})."]
    for way in ways:
        row = table[way]
        way_low, way_high = wilson_interval(row["right"], row["n"])
        lines.append(f"After {way} ({row['seconds']:.0f} s of training): {row['right']} of {row['n']}, "
                     f"{_told(row['right'] - first['right'], 'the start')} (95% interval {way_low:.3f}-{way_high:.3f}; "
                     f"{_verdict(row, first)}).")
    if len(ways) == 2:
        one, other = table[ways[0]], table[ways[1]]
        times = f"{one['seconds'] / other['seconds']:.1f} times as long" if other["seconds"] else "longer"
        lines.append(f"{ways[0]} against {ways[1]}: {_told(one['right'] - other['right'], ways[1])} "
                     f"({_verdict(one, other)}); its training took {times}.")
    return lines


def step_findings(multipliers: dict[str, float]) -> list[str]:
    """A sentence on the learning-rate multipliers each way trained at (``name -> multiplier``, two ways): a comparison
    of two methods at their own "auto" steps is not one at the same step."""
    (one, a), (other, b) = multipliers.items()
    if a == b:
        return [f"{one} and {other} trained at the same learning-rate multiplier ({a:g})."]
    larger, smaller = (one, other) if a > b else (other, one)
    ratio = max(a, b) / min(a, b)
    return [f"{one} trained at learning-rate multiplier {a:g} and {other} at {b:g}, each its method's \"auto\": "
            f"{larger}'s step was {ratio:g} times {smaller}'s, so this compares the methods as each runs by default, not "
            f"at one step size (exercise 4)."]


def job_seconds(job) -> int:
    """A finished job's time from creation to finish, in seconds (its wait in the queue included: in this notebook
    each job is the only one)."""
    return int((job.finished_at or job.created_at) - job.created_at)
