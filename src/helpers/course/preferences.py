"""Preferences with DPO (notebook 09): a training file written in mixed styles, a preference file built from the
course data, and a judge that says which of two answers to the same request is better.

A preference example is OpenAI's DPO format: ``input`` (the request's messages), ``preferred_output`` and
``non_preferred_output`` (one assistant message each). Here the preferred answer is the course's exact form and
the other says the same in a form a billing system cannot parse (chatty, or the code first).
"""
from __future__ import annotations

import random
import re

import pandas as pd

from helpers.course import evaluation
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


FIVE_DIGITS = re.compile(r"(?<!\d)\d{5}(?!\d)")


def named_code(answer: str | None) -> str | None:
    """The code an answer names, whatever its style: the course form's code, else the one five-digit number in the
    text (None when it names none, or several different ones). A chatty "bill it under CPT code 93306" names 93306."""
    parsed = parse_answer(answer)
    if parsed is not None:
        return parsed[0]
    found = set(FIVE_DIGITS.findall(answer or ""))
    return found.pop() if len(found) == 1 else None


def with_facts(results: pd.DataFrame) -> pd.DataFrame:
    """Scored answers (from ``evaluation.evaluate``) with ``right_code_any_style``: the answer names the expected code,
    in whatever style it is written. ``format_ok`` is the form; this is the fact, apart from the form."""
    return results.assign(right_code_any_style=results["answer"].map(named_code) == results["expected_code"])


def _sides(after: pd.DataFrame, before: pd.DataFrame) -> dict[str, pd.Series]:
    """Request by request, on form and on facts: +1 where ``after`` is better, -1 where ``before`` is, 0 for a tie."""
    after, before = with_facts(after), with_facts(before)
    return {side: after[column].astype(int) - before[column].astype(int)
            for side, column in (("form", "format_ok"), ("facts", "right_code_any_style"))}


def head_to_head(after: pd.DataFrame, before: pd.DataFrame) -> dict:
    """The judge, request by request, on two questions apart: **form** (can the billing system read the answer?) and
    **facts** (does the answer name the right code, in any style?). An answer in the form with a wrong code beats a
    chatty one with the right code on form and loses on facts; a form win is never counted as a fact win. Each
    ``win_rate`` counts a tie as half a win, as preference evaluations usually do (0.5: no change)."""
    def counts(sign: pd.Series) -> dict[str, float]:
        wins, losses = int((sign > 0).sum()), int((sign < 0).sum())
        ties = len(sign) - wins - losses
        return {"wins": wins, "ties": ties, "losses": losses, "win_rate": (wins + ties / 2) / max(len(sign), 1)}

    return {"n": len(after), **{side: counts(sign) for side, sign in _sides(after, before).items()}}


def verdicts(after: pd.DataFrame, before: pd.DataFrame, names: tuple[str, str] = ("SFT + DPO", "SFT")) -> pd.DataFrame:
    """The requests where the two models differ on form or on facts, with each answer and who was better on each."""
    said = {side: sign.map(lambda d: f"{names[0]} better" if d > 0 else f"{names[1]} better" if d < 0 else "tie")
            for side, sign in _sides(after, before).items()}
    table = pd.DataFrame({"request": before["request"], "expected code": before["expected_code"], names[1]: before["answer"],
                          names[0]: after["answer"], **said})
    differ = (table["form"] != "tie") | (table["facts"] != "tie")
    return table[differ].sort_values(["facts", "form"], key=lambda c: c.map({f"{names[1]} better": 0, "tie": 1}).fillna(2))


def summarize(results: pd.DataFrame, *, priced_as: str) -> dict[str, float | None]:
    """``evaluation.summarize`` of a fine-tuned model's answers, with ``right_code_any_style``: the share of answers
    that name the right code whatever their style (the facts, apart from the form)."""
    return {**evaluation.summarize(results, priced_as=priced_as, fine_tuned=True),
            "right_code_any_style": float(with_facts(results)["right_code_any_style"].mean())}


def before_after_table(summaries: dict[str, dict], results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Form, facts and styles of each model: format compliance, code accuracy (the right code in the form, as the
    billing system reads it), the right code in any style, exact match, and the share of answers in each style."""
    rows = ["format_compliance", "code_accuracy", "right_code_any_style", "exact_match"]
    return pd.concat([pd.DataFrame(summaries).loc[rows], styles_table(results)]).astype(float)


def dpo_findings(before: dict, after: dict, match: dict, beta: float) -> list[str]:
    """What the DPO notebook's table shows, in sentences computed from it (``before`` and ``after`` from :func:`summarize`)."""
    n = after["n"]
    lines = [f"Format compliance went from {before['format_compliance']:.3f} to {after['format_compliance']:.3f}, and code "
             f"accuracy (the right code in the form the billing system reads) from {before['code_accuracy']:.3f} to "
             f"{after['code_accuracy']:.3f}, on {n:.0f} held-out requests (beta = {beta:g}). The 95% interval of code accuracy "
             f"was {before['code_accuracy_ci_low']:.2f}-{before['code_accuracy_ci_high']:.2f} before and "
             f"{after['code_accuracy_ci_low']:.2f}-{after['code_accuracy_ci_high']:.2f} after"
             f"{' (they overlap)' if after['code_accuracy_ci_low'] <= before['code_accuracy_ci_high'] else ''}."]
    facts = {"before": before["right_code_any_style"], "after": after["right_code_any_style"]}
    fact_gain = facts["after"] - facts["before"]
    code_gain = after["code_accuracy"] - before["code_accuracy"]
    one = 1 / max(n, 1)
    within_one = abs(fact_gain) <= one * 1.001  # a request's difference at most: what a rerun can change (benchmarks/RESULTS.md)
    facts_line = (f"Read in any style (a chatty answer's code counts), the right code went from {facts['before']:.3f} to "
                  f"{facts['after']:.3f}: ")
    if abs(fact_gain) < one / 2:
        facts_line += "the facts did not move, so the whole change in code accuracy is form: right codes now written so the billing system reads them."
    elif within_one:
        facts_line += (f"one request's difference, so nearly all of code accuracy's {code_gain:+.3f} is form: right codes now "
                       "written so the billing system reads them.")
    elif fact_gain > 0:
        facts_line += (f"{fact_gain:.3f} of the {code_gain:+.3f} in code accuracy is codes the model now gets right, the rest is "
                       "right codes now written in the form.")
    else:
        facts_line += (f"the model names the right code less often after DPO ({fact_gain:+.3f}), so code accuracy's "
                       f"{code_gain:+.3f} is form gained at a cost in facts: answers it used to get right in another style "
                       "now have the form and a wrong code.")
    lines.append(facts_line)
    form, fact = match["form"], match["facts"]
    lines.append(f"Judged request by request on form, the DPO model won {form['wins']}, tied {form['ties']} and lost "
                 f"{form['losses']} (a win rate of {form['win_rate']:.3f}; 0.5 means no change); on facts, it won {fact['wins']}, "
                 f"tied {fact['ties']} and lost {fact['losses']} (a win rate of {fact['win_rate']:.3f}). A form win with a wrong "
                 "code is not counted as a fact win.")
    if fact["losses"] or form["losses"]:
        lines.append(f"It is not better everywhere: the model it started from was better on facts on {fact['losses']} request(s) "
                     f"and on form on {form['losses']} (listed below).")
    gain_format = after["format_compliance"] - before["format_compliance"]
    if gain_format > 0 and (within_one or fact_gain < 0):
        lines.append("The pairs differ only in form (both answers name the same code), so form is what DPO moved: it taught "
                     "which of two answers is better, not facts the answers share. Facts come from supervised examples (03).")
    elif gain_format <= 0:
        lines.append("The format did not improve at these settings. Read the answers: a model trained by DPO alone, from a base "
                     "that never writes the preferred form, can drift into text neither answer resembles; OpenAI's advice is "
                     "to fine-tune with SFT first and apply DPO to that model.")
    else:
        lines.append("Both moved: the form, which the pairs taught, and the codes, which the pairs share (preferring an answer "
                     "also raises the likelihood of the code written in it).")
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
