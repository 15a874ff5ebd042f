"""The ladder: prompt engineering -> RAG -> fine-tuning -> distillation, as a small decision helper.

Each rung fixes a different problem; take the lowest rung that fixes yours. ``recommend`` turns a few
yes/no facts about a task into the rung to try next and the reasons, so a team can argue with the rules.
"""
from __future__ import annotations

from dataclasses import dataclass

LADDER = ("prompt engineering", "RAG", "fine-tuning", "distillation")


@dataclass(frozen=True)
class Task:
    name: str
    prompting_meets_quality: bool      # does a good prompt on a strong model already do the job?
    needs_facts_outside_model: bool    # private, fresh or long-tail facts the model cannot know
    needs_strict_format_or_style: bool # a fixed output format or voice, every time
    labeled_examples: int              # good input -> output pairs you have (or can make)
    queries_per_month: int


def recommend(task: Task) -> tuple[str, list[str]]:
    """The rung to try next, and why."""
    reasons = []
    if task.prompting_meets_quality and task.queries_per_month < 100_000:
        return LADDER[0], ["a prompt already meets the bar, and the volume is too small for training to pay back"]
    if task.needs_facts_outside_model:
        reasons.append("facts the model cannot know come from retrieval, not from training")
        if not task.needs_strict_format_or_style:
            return LADDER[1], reasons
    if task.labeled_examples < 50:
        reasons.append(f"only {task.labeled_examples} labeled examples: collect 50-100 good ones before training")
        return (LADDER[1] if task.needs_facts_outside_model else LADDER[0]), reasons
    if task.needs_strict_format_or_style:
        reasons.append("a fixed format or style is what fine-tuning teaches best")
    if task.needs_facts_outside_model:  # and a strict format: each rung does its own part
        return f"{LADDER[2]} + {LADDER[1]}", reasons
    if task.queries_per_month >= 100_000 and task.prompting_meets_quality:
        reasons.append("a big model already does it well: distill it into a small one and pay less per query")
        return LADDER[3], reasons
    if task.queries_per_month >= 100_000:
        reasons.append("at this volume, a short prompt on a tuned model costs far less than a long prompt")
    return LADDER[2], reasons or ["prompting falls short and there is enough data to train"]
