"""Preferences with DPO (notebook 09): a training file written in mixed styles, a preference file built from the
course data, and a judge that says which of two answers to the same request is better.

A preference example is OpenAI's DPO format: ``input`` (the request's messages), ``preferred_output`` and
``non_preferred_output`` (one assistant message each). Here the preferred answer is the course's exact form and
the other says the same in a form a billing system cannot parse (chatty, or the code first).
"""
from __future__ import annotations

import random

import pandas as pd

from helpers.course.billing import parse_answer

#: How a non-preferred answer is written: the same code and description, in a form the course's parser rejects.
REJECTED_STYLES = {
    "chatty": "Sure! That procedure is {description}. You would bill it under CPT code {code}. Let me know if you need anything else.",
    "code first": "CPT Code: {code} - {description}",
    "code only": "{code}",
}


def preference_pairs(rows: list[dict], seed: int, styles: tuple[str, ...] = tuple(REJECTED_STYLES)) -> list[dict]:
    """One DPO example per course example: its request as ``input``, its answer preferred over the same answer in
    one of ``styles`` (drawn with ``seed``)."""
    unknown = set(styles) - set(REJECTED_STYLES)
    if unknown or not styles:
        raise ValueError(f"REJECTED_STYLES must name some of {', '.join(REJECTED_STYLES)}; got {list(styles)}.")
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        answer = row["messages"][-1]["content"]
        code, description = parse_answer(answer)
        worse = REJECTED_STYLES[rng.choice(styles)].format(code=code, description=description)
        pairs.append({"input": {"messages": row["messages"][:-1]},
                      "preferred_output": [{"role": "assistant", "content": answer}],
                      "non_preferred_output": [{"role": "assistant", "content": worse}]})
    return pairs


def mixed_styles(rows: list[dict], pairs: list[dict], share: float, seed: int) -> tuple[list[dict], int]:
    """A supervised file written by many hands: each example's answer replaced, with probability ``share`` (drawn
    with ``seed``), by its pair's non-preferred form (the same code in a style a billing system cannot parse).
    Returns the rows and how many were rewritten."""
    if not 0 <= share <= 1:
        raise ValueError(f"MIXED_SHARE must be between 0 and 1, got {share}.")
    rng = random.Random(seed)
    out, rewritten = [], 0
    for row, pair in zip(rows, pairs, strict=True):
        if rng.random() < share:
            row = {**row, "messages": row["messages"][:-1] + pair["non_preferred_output"]}
            rewritten += 1
        out.append(row)
    return out, rewritten


def style_of(answer: str) -> str:
    """Which style an answer is written in: "course form" (the parser reads it), one of REJECTED_STYLES, or "other"."""
    if parse_answer(answer) is not None:
        return "course form"
    text = answer.strip()
    if text.startswith("Sure!"):
        return "chatty"
    if text.startswith("CPT Code:"):
        return "code first"
    if text.isdigit():
        return "code only"
    return "other"


def styles_table(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The share of each model's answers in each style (one column per model)."""
    styles = ["course form", *REJECTED_STYLES, "other"]
    return pd.DataFrame({name: frame["answer"].map(style_of).value_counts(normalize=True).reindex(styles, fill_value=0.0)
                         for name, frame in results.items()})


def rank(result: pd.Series) -> int:
    """How good one scored answer is: 3 exactly right, 2 the right code in the format, 1 in the format with a wrong
    code, 0 not in the format (a billing system cannot read it)."""
    return 3 if result["exact"] else 2 if result["code_ok"] else 1 if result["format_ok"] else 0


def head_to_head(after: pd.DataFrame, before: pd.DataFrame) -> dict[str, float]:
    """The judge: request by request, the answer of higher :func:`rank` wins (equal ranks tie). ``win_rate`` counts a
    tie as half a win, as preference evaluations usually do."""
    a, b = after.apply(rank, axis=1), before.apply(rank, axis=1)
    wins, losses = int((a > b).sum()), int((a < b).sum())
    ties = len(a) - wins - losses
    return {"n": len(a), "wins": wins, "ties": ties, "losses": losses, "win_rate": (wins + ties / 2) / max(len(a), 1)}


def dpo_findings(before: dict, after: dict, match: dict[str, float], beta: float) -> list[str]:
    """What the DPO notebook's table shows, in sentences computed from it."""
    lines = [f"Format compliance went from {before['format_compliance']:.3f} to {after['format_compliance']:.3f}, and code "
             f"accuracy from {before['code_accuracy']:.3f} to {after['code_accuracy']:.3f}, on {after['n']:.0f} held-out requests "
             f"(beta = {beta:g}). The 95% interval of code accuracy was {before['code_accuracy_ci_low']:.2f}-"
             f"{before['code_accuracy_ci_high']:.2f} before and {after['code_accuracy_ci_low']:.2f}-{after['code_accuracy_ci_high']:.2f} "
             f"after{' (they overlap)' if after['code_accuracy_ci_low'] <= before['code_accuracy_ci_high'] else ''}."]
    lines.append(f"Judged request by request, the DPO model won {match['wins']}, tied {match['ties']} and lost {match['losses']}: "
                 f"a win rate of {match['win_rate']:.3f} against the model it started from (0.5 means no change).")
    if match["losses"]:
        lines.append(f"It is not better everywhere: on {match['losses']} request(s) the model it started from gave the better "
                     "answer (listed below).")
    gain_format = after["format_compliance"] - before["format_compliance"]
    gain_code = after["code_accuracy"] - before["code_accuracy"]
    if gain_format > 0 and gain_code < gain_format / 2:
        lines.append("The pairs differ only in form (both answers name the same code), so form is what moved: DPO taught "
                     "which of two answers is better, not facts the answers share. Facts come from supervised examples (03).")
    elif gain_format <= 0:
        lines.append("The format did not improve at these settings. Read the answers: a model trained by DPO alone, from a base "
                     "that never writes the preferred form, can drift into text neither answer resembles; OpenAI's advice is "
                     "to fine-tune with SFT first and apply DPO to that model.")
    else:
        lines.append("Code accuracy rose with the format: once the model writes the form, the code it writes is scored too.")
    return lines


def dpo_curve_findings(steps: pd.DataFrame, beta: float) -> list[str]:
    """What the DPO job's step metrics show: the loss starts at log 2 (the model is its own reference), and how
    often the preferred answer had gained on the other one ("reward accuracy")."""
    first, last = steps.iloc[0], steps.tail(max(1, len(steps) // 5))
    return [f"The DPO loss started at {first['train_loss']:.3f} (log 2 = 0.693: at step 1 the model is the reference it is "
            f"compared with, so each margin is 0) and averaged {last['train_loss'].mean():.3f} over the last {len(last)} "
            f"step{'s' if len(last) != 1 else ''}.",
            f"Reward accuracy, the share of pairs in a batch where the preferred answer had gained more log-probability than "
            f"the other (beta = {beta:g} scales the gap), averaged {last['train_accuracy'].mean():.2f} there."]
