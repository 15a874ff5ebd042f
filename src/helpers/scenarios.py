"""The ways to serve the billing task, priced from the table, with token counts measured on the data.

* prompting: a large model with instructions, the whole code table and worked examples in every prompt;
* RAG: a mid-size model with instructions and the few codes retrieved for this request;
* fine-tuned: a fine-tuned mid-size model with a one-line prompt (it learns the format and the codes it was
  trained on; notebook 04 measures how well, and that codes it never saw stay unknown);
* fine-tuned + RAG: the same tuned model given the retrieved codes too (what answers codes training never saw);
* distilled: a fine-tuned small model, trained on a big model's answers, same short prompt.

Token counts are tiktoken counts (``o200k_base``) of real prompts built from ``data/billing``; prices come
from ``data/prices.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from statistics import mean

from helpers import billing
from helpers.costs import Approach, break_even_queries, compare_approaches, training_cost
from helpers.token_counts import count_example_tokens
from helpers.tokens import get_encoding

FEW_SHOT_EXAMPLES = 20
RETRIEVED_CODES = 5


@dataclass(frozen=True)
class PromptSizes:
    """Measured tokens per request (input) and per answer (output) for each approach."""

    prompting_input: int
    rag_input: int
    short_input: int
    output: int
    train_tokens_per_example: int
    train_examples: int


def _messages_tokens(messages: list[dict]) -> int:
    """Input tokens of a request by the chat recipe (messages plus the reply primer)."""
    return count_example_tokens({"messages": messages}, get_encoding("o200k_base")).total


def measure_prompt_sizes() -> PromptSizes:
    """Build each approach's prompt for the course's test requests and count their tokens."""
    rows = [json.loads(line) for line in (billing.BILLING_DIR / "test.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (billing.BILLING_DIR / "train.jsonl").read_text().splitlines()]
    shots = "\n".join(f"{r['messages'][1]['content']} -> {r['messages'][2]['content']}" for r in train[:FEW_SHOT_EXAMPLES])
    codes = billing.load_codes()
    long_system = f"{billing.SYSTEM_PROMPT}\n\nCodes:\n{billing.code_reference()}\n\nExamples:\n{shots}"
    # RAG adds RETRIEVED_CODES code lines to the prompt; which ones does not change the size much.
    rag_system = f"{billing.SYSTEM_PROMPT}\n\nCandidate codes:\n{billing.code_reference(codes[:RETRIEVED_CODES])}"
    encoding = get_encoding("o200k_base")
    users = [r["messages"][1]["content"] for r in rows]
    answers = [r["messages"][2]["content"] for r in rows]
    per_example = [count_example_tokens(r, encoding).total for r in train]

    def average_input(system: str) -> int:
        return round(mean(_messages_tokens([{"role": "system", "content": system}, {"role": "user", "content": u}]) for u in users))

    return PromptSizes(
        prompting_input=average_input(long_system),
        rag_input=average_input(rag_system),
        short_input=average_input(billing.SYSTEM_PROMPT),
        output=round(mean(len(encoding.encode_ordinary(a)) for a in answers)),
        train_tokens_per_example=round(mean(per_example)),
        train_examples=len(train),
    )


def course_approaches(sizes: PromptSizes, *, training_examples: int | None = None, tokens_per_example: int | None = None,
                      epochs: int | str = "auto", retrains_per_year: int = 4, input_tokens: int | None = None,
                      output_tokens: int | None = None, prompting_model: str = "gpt-4.1", tuned_model: str = "gpt-4.1-mini",
                      student_model: str = "gpt-4.1-nano") -> list[Approach]:
    """The five approaches. ``input_tokens`` overrides the short prompt's size (the long prompts keep their
    measured overhead on top); training is paid ``retrains_per_year`` times a year."""
    examples = training_examples or sizes.train_examples
    per_example = tokens_per_example or sizes.train_tokens_per_example
    short = input_tokens or sizes.short_input
    extra = short - sizes.short_input
    output = output_tokens or sizes.output
    tuning = training_cost(tuned_model, examples, per_example, epochs)
    distilling = training_cost(student_model, examples, per_example, epochs)
    yearly = lambda one_run: one_run * retrains_per_year / 12  # noqa: E731  (monthly share)
    return [
        Approach("prompting", prompting_model, sizes.prompting_input + extra, output),
        Approach("RAG", tuned_model, sizes.rag_input + extra, output),
        Approach("fine-tuned", tuned_model, short, output, fine_tuned=True, monthly_fixed_usd=yearly(tuning)),
        Approach("fine-tuned + RAG", tuned_model, sizes.rag_input + extra, output, fine_tuned=True, monthly_fixed_usd=yearly(tuning)),
        Approach("distilled", student_model, short, output, fine_tuned=True, monthly_fixed_usd=yearly(distilling)),
    ]


def scenario_table(approaches: list[Approach], volumes: list[int]):
    """Monthly cost per approach at each volume, and the cheapest."""
    table = compare_approaches(approaches, volumes).round(2)
    table["cheapest"] = table.idxmin(axis=1)
    return table


def _named(approaches: list[Approach], name: str) -> Approach:
    return next(a for a in approaches if a.name == name)


def cheaper_from(a: Approach, than: Approach) -> float | None:
    """The monthly volume from which ``a`` costs less than ``than``: 0 if it always does, None if it never does."""
    if a.monthly_cost(0) <= than.monthly_cost(0) and a.per_query_usd() <= than.per_query_usd():
        return 0.0
    if a.per_query_usd() >= than.per_query_usd():
        return None
    return break_even_queries(than, a)


def break_even_table(approaches: list[Approach]):
    """Per approach: its price per query, its fixed monthly cost, and the monthly volume from which it is cheaper
    than prompting and than RAG (0: at any volume; empty: never)."""
    import pandas as pd

    prompting, rag = _named(approaches, "prompting"), _named(approaches, "RAG")
    rows = [{"approach": a.name, "per_query_usd": a.per_query_usd(), "monthly_fixed_usd": a.monthly_fixed_usd,
             "cheaper_than_prompting_from": None if a is prompting else cheaper_from(a, prompting),
             "cheaper_than_RAG_from": None if a is rag else cheaper_from(a, rag)} for a in approaches]
    return pd.DataFrame(rows).set_index("approach")


def cost_findings(table, approaches: list[Approach]) -> list[str]:
    """What the monthly-cost table shows, in sentences computed from it (the summary of notebook 01)."""
    volumes = list(table.index)
    costs = table.drop(columns="cheapest")
    names = list(costs.columns)
    dearest = [costs.loc[v].idxmax() for v in volumes]
    lines = []
    for volume in (volumes[0], volumes[-1]):
        row = costs.loc[volume]
        lines.append(f"At {volume:,} queries a month the cheapest is {row.idxmin()} (${row.min():,.2f} a month) "
                     f"and the dearest {row.idxmax()} (${row.max():,.2f}).")
    if all(d == "prompting" for d in dearest):
        lines.append("Prompting (the whole code table and worked examples in every request) is the dearest at every volume "
                     "in the table: it has no set-up cost, but its long prompt costs more per query than anything else.")
    else:
        lines.append("Prompting is not the dearest everywhere: " + ", ".join(f"at {v:,} the dearest is {d}" for v, d in zip(volumes, dearest)) + ".")
    tuned, rag = _named(approaches, "fine-tuned"), _named(approaches, "RAG")
    volume = cheaper_from(tuned, rag)
    if volume is None:
        lines.append(f"RAG is cheaper than the fine-tuned model at every volume: a fine-tuned model's tokens cost more "
                     f"(${tuned.per_query_usd() * 1000:.3f} against ${rag.per_query_usd() * 1000:.3f} per 1,000 queries) "
                     "than the few retrieved codes save, and training adds a fixed cost.")
    else:
        lines.append(f"The fine-tuned model becomes cheaper than RAG from {volume:,.0f} queries a month.")
    both = _named(approaches, "fine-tuned + RAG")
    lines.append(f"Fine-tuned + RAG, the set-up that also answers codes training never saw (notebook 04), costs "
                 f"{both.per_query_usd() / rag.per_query_usd():.2f}x RAG per query, plus training; fine-tuning pays "
                 "here for what it does to quality, not for what it saves.")
    cheapest = {costs.loc[v].idxmin() for v in volumes}
    lines.append("Cheapest across the volumes in the table: " + ", ".join(sorted(cheapest, key=names.index)) + ".")
    return lines


def examples_for_budget(model: str, budget_usd: float, tokens_per_example: int, epochs: int = 3) -> int:
    """How many examples of this size a training budget buys (for checking claims like "$50-$500")."""
    from helpers.costs import prices

    return int(budget_usd * 1_000_000 / (tokens_per_example * epochs * prices(model, fine_tuned=True).training))


def claim_findings(sizes: PromptSizes, low_usd: float, high_usd: float, model: str = "gpt-4.1-mini") -> list[str]:
    """The "$low-$high to fine-tune" claim against what the course's own data costs to train (OpenAI's rule of epochs)."""
    cost = training_cost(model, sizes.train_examples, sizes.train_tokens_per_example)
    low = examples_for_budget(model, low_usd, sizes.train_tokens_per_example)
    high = examples_for_budget(model, high_usd, sizes.train_tokens_per_example)
    return [f"Training {model} on the course's {sizes.train_examples} examples costs ${cost:,.2f}, "
            f"{low_usd / cost:,.0f}x less than the claim's ${low_usd:,.0f}; ${low_usd:,.0f}-${high_usd:,.0f} buys "
            f"{low:,}-{high:,} examples of this size: the claim is about data sets {low // sizes.train_examples:,}x "
            f"to {high // sizes.train_examples:,}x larger than this one."]
