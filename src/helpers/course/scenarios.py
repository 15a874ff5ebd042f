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

from dataclasses import dataclass
from statistics import mean

from helpers.course import billing
from helpers.course.retrieval import CANDIDATES_HEADING
from helpers.data.dataprep import read_jsonl
from helpers.data.token_counts import count_example_tokens
from helpers.data.tokens import get_encoding
from helpers.pricing.costs import Approach, break_even_queries, compare_approaches, resolve_epochs, training_cost

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
    pool_requests: int


def openai_input_tokens(messages: list[dict]) -> int:
    """Input tokens OpenAI counts for a request (``o200k_base``, messages plus the reply primer)."""
    return count_example_tokens({"messages": messages}, get_encoding("o200k_base")).total


def _train_rows() -> list[dict]:
    return read_jsonl(billing.BILLING_DIR / "train.jsonl")


def long_system_prompt() -> str:
    """Prompting's system prompt: the instruction, the whole code table and worked examples from training."""
    shots = "\n".join(f"{r['messages'][1]['content']} -> {r['messages'][2]['content']}" for r in _train_rows()[:FEW_SHOT_EXAMPLES])
    return f"{billing.SYSTEM_PROMPT}\n\nCodes:\n{billing.code_reference()}\n\nExamples:\n{shots}"


def with_long_prompt(messages: list[dict]) -> list[dict]:
    """The same request with its system prompt replaced by prompting's long one."""
    return [{"role": "system", "content": long_system_prompt()}, *[m for m in messages if m["role"] != "system"]]


def measure_prompt_sizes() -> PromptSizes:
    """Build each approach's prompt for the course's test requests and count their tokens."""
    rows = read_jsonl(billing.BILLING_DIR / "test.jsonl")
    train = _train_rows()
    codes = billing.load_codes()
    long_system = long_system_prompt()
    # RAG adds RETRIEVED_CODES code lines to the prompt; which ones does not change the size much.
    rag_system = f"{billing.SYSTEM_PROMPT}{CANDIDATES_HEADING}{billing.code_reference(codes[:RETRIEVED_CODES])}"
    encoding = get_encoding("o200k_base")
    users = [r["messages"][1]["content"] for r in rows]
    answers = [r["messages"][2]["content"] for r in rows]
    per_example = [count_example_tokens(r, encoding).total for r in train]

    def average_input(system: str) -> int:
        return round(mean(openai_input_tokens([{"role": "system", "content": system}, {"role": "user", "content": u}]) for u in users))

    return PromptSizes(
        prompting_input=average_input(long_system),
        rag_input=average_input(rag_system),
        short_input=average_input(billing.SYSTEM_PROMPT),
        output=round(mean(len(encoding.encode_ordinary(a)) for a in answers)),
        train_tokens_per_example=round(mean(per_example)),
        train_examples=len(train),
        pool_requests=len((billing.BILLING_DIR / "pool.jsonl").read_text().splitlines()),
    )


def course_approaches(sizes: PromptSizes, *, training_examples: int | None = None, tokens_per_example: int | None = None,
                      epochs: int | str = "auto", retrains_per_year: int = 4, input_tokens: int | None = None,
                      output_tokens: int | None = None, prompting_model: str = "gpt-4.1", tuned_model: str = "gpt-4.1-mini",
                      student_model: str = "gpt-4.1-nano") -> list[Approach]:
    """The five approaches. ``input_tokens`` overrides the short prompt's size (the long prompts keep their
    measured overhead on top); training is paid ``retrains_per_year`` times a year. Distillation's set-up is the
    teacher (the prompting approach) labelling the pool plus the student's training on its answers."""
    examples = training_examples or sizes.train_examples
    per_example = tokens_per_example or sizes.train_tokens_per_example
    short = input_tokens or sizes.short_input
    extra = short - sizes.short_input
    output = output_tokens or sizes.output
    tuning = training_cost(tuned_model, examples, per_example, epochs)
    prompting = Approach("prompting", prompting_model, sizes.prompting_input + extra, output)
    distilling = distillation_setup_cost(sizes, prompting, student_model, per_example, epochs)["total"]
    yearly = lambda one_run: one_run * retrains_per_year / 12  # noqa: E731  (monthly share)
    return [
        prompting,
        Approach("RAG", tuned_model, sizes.rag_input + extra, output),
        Approach("fine-tuned", tuned_model, short, output, fine_tuned=True, monthly_fixed_usd=yearly(tuning)),
        Approach("fine-tuned + RAG", tuned_model, sizes.rag_input + extra, output, fine_tuned=True, monthly_fixed_usd=yearly(tuning)),
        Approach("distilled", student_model, short, output, fine_tuned=True, monthly_fixed_usd=yearly(distilling)),
    ]


def distillation_setup_cost(sizes: PromptSizes, teacher: Approach, student_model: str = "gpt-4.1-nano",
                            tokens_per_example: int | None = None, epochs: int | str = "auto") -> dict[str, float]:
    """One distillation run: the teacher answers every pool request, the student trains on the answers."""
    labelling = sizes.pool_requests * teacher.per_query_usd()
    training = training_cost(student_model, sizes.pool_requests, tokens_per_example or sizes.train_tokens_per_example, epochs)
    return {"teacher labelling": labelling, "student training": training, "total": labelling + training}


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
    from helpers.pricing.costs import prices

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


# Where each approach's accuracy is measured: notebook, and the keys of its summary in that notebook's metrics.
MEASURED_IN = {
    "prompting": ("04_inference_and_eval", ("prompting", "base + long prompt")),
    "RAG": ("04_inference_and_eval", ("prompting", "base + RAG")),
    "fine-tuned": ("04_inference_and_eval", ("tuned",)),
    "fine-tuned + RAG": ("05_distillation", ("comparison", "teacher")),
    "distilled": ("05_distillation", ("comparison", "student")),
}


def measured_accuracy(metrics: dict[str, dict], assumed: float) -> dict[str, tuple[float, str]]:
    """Per approach: code accuracy on the held-out test set and where it comes from, measured by 04/05 when
    ``metrics`` (notebook -> its recorded metrics) hold it, else ``assumed``, labelled so."""
    out = {}
    for name, (notebook, keys) in MEASURED_IN.items():
        summary = metrics.get(notebook) or {}
        for key in keys:
            summary = summary.get(key) or {}
        if summary.get("code_accuracy") is not None:
            out[name] = (summary["code_accuracy"], f"measured in {notebook[:2]} on {int(summary['n'])} requests (local stand-in)")
        else:
            out[name] = (assumed, f"assumed {assumed:.0%} (run 04 and 05 to measure)")
    return out


def per_correct_answer(approaches: list[Approach], accuracy: dict[str, tuple[float, str]]):
    """Price per 1,000 queries beside price per 1,000 *correct* answers (queries / accuracy)."""
    import pandas as pd

    rows = [{"approach": a.name, "usd_per_1000_queries": 1000 * a.per_query_usd(), "code_accuracy": accuracy[a.name][0],
             "usd_per_1000_correct": 1000 * a.per_query_usd() / accuracy[a.name][0] if accuracy[a.name][0] else None,
             "accuracy_from": accuracy[a.name][1]} for a in approaches]
    return pd.DataFrame(rows).set_index("approach")


def per_correct_findings(frame) -> list[str]:
    """What :func:`per_correct_answer`'s table shows, in sentences computed from it."""
    per_query = frame["usd_per_1000_queries"].idxmin()
    answered = frame.dropna(subset=["usd_per_1000_correct"])
    lines = [f"Cheapest per query: {per_query} (${frame.loc[per_query, 'usd_per_1000_queries']:.3f} per 1,000 queries)."]
    if len(answered):
        best = answered["usd_per_1000_correct"].idxmin()
        lines.append(f"Cheapest per correct answer: {best} (${answered.loc[best, 'usd_per_1000_correct']:.3f} per 1,000 correct "
                     f"answers, at {answered.loc[best, 'code_accuracy']:.0%} accuracy)"
                     + (", the same as per query." if best == per_query else ": a wrong answer is paid for too, so accuracy "
                        "changes the ranking."))
    never = [name for name in frame.index if not frame.loc[name, "code_accuracy"]]
    if never:
        lines.append(f"{', '.join(never)} never named the right code here, so no price buys a correct answer from "
                     f"{'it' if len(never) == 1 else 'them'}. Measured with the 135M stand-in, which cannot follow the "
                     "format from a prompt (04); on OpenAI, measure them with the real models before you decide.")
    if frame["accuracy_from"].str.startswith("assumed").any():
        lines.append("Rows marked assumed use one accuracy for every approach, so they rank as per query; run 04 and 05, "
                     "then this notebook again, to put measurements in their place.")
    return lines


# Figures the course outline (the seed this workbook grew from) states, each with the row it comes from: its
# approaches table (set-up cost per approach) and its cost table (set-up, latency and quality per approach). The
# per-query and per-token figures and the prompting model are quoted from its text.
SEED_FIGURES = {
    "rag_setup": ("cost table, RAG row: set-up", "$5 (embeddings)"),
    "rag_usd_per_query": ("the outline's RAG cost per query", 0.01),
    "rag_latency": ("cost table, RAG row: latency", "+200ms"),
    "distilled_usd_per_million": ("the outline's price of a distilled model", 0.10),
    "fine_tuning_usd": ("approaches table, fine-tuning row: set-up", (10, 1_000)),
    "fine_tuning_gpt41_usd": ("cost table, fine-tuning (GPT-4.1) row: set-up", (500, 5_000)),
    "distillation_approaches_usd": ("approaches table, distillation row: set-up", (50, 500)),
    "distillation_cost_table_usd": ("cost table, distillation row: set-up", (100, 1_000)),
    "prompting_model": ("the outline's prompting model", "gpt-5"),
    "fine_tuning_quality": ("cost table, fine-tuning row: quality", "Very High (domain)"),
}


def _against_range(low: float, high: float, cost: float) -> str:
    """Where one computed cost sits against a quoted range."""
    if cost < low:
        return f"{low / cost:,.0f}x-{high / cost:,.0f}x this data's cost"
    if cost > high:
        return f"this data costs {cost / high:,.1f}x the top of the range"
    return "this data's cost is inside the range"


def seed_figures(sizes: PromptSizes, approaches: list[Approach], fine_tuned_accuracy: tuple[float, str] | None = None):
    """The course outline's figures, each with its source row, against today's price table and this data, with a
    verdict and the per-token price it rests on."""
    import pandas as pd

    from helpers.pricing.costs import prices

    seed = {key: value for key, (_, value) in SEED_FIGURES.items()}
    rag, prompting, distilled = (_named(approaches, n) for n in ("RAG", "prompting", "distilled"))
    rag_query = rag.per_query_usd()
    rag_model = prices(rag.model, fine_tuned=False)
    tokens_for_seed = (seed["rag_usd_per_query"] - rag.output_tokens * rag_model.output / 1e6) / (rag_model.input / 1e6)
    nano = prices(distilled.model, fine_tuned=True)
    tuned_model = _named(approaches, "fine-tuned").model
    per_example, n_examples = sizes.train_tokens_per_example, sizes.train_examples
    epochs = resolve_epochs("auto", n_examples)

    def trained(model: str) -> tuple[float, str]:
        cost = training_cost(model, n_examples, per_example)
        return cost, (f"${cost:,.2f} to train {model} on this data's {n_examples} examples ({per_example} tokens each, "
                      f"{epochs} epochs) at ${prices(model, fine_tuned=True).training:.2f} per 1M training tokens")

    def fits(model: str, low: float, high: float) -> str:
        return (f"; the range buys {examples_for_budget(model, low, per_example):,}-{examples_for_budget(model, high, per_example):,} "
                f"examples of this size")

    tuning, tuning_text = trained(tuned_model)
    big_tuning, big_tuning_text = trained("gpt-4.1")
    setup = distillation_setup_cost(sizes, prompting, distilled.model)
    teacher = prices(prompting.model, fine_tuned=False)
    setup_text = (f"${setup['total']:,.2f}: {prompting.model} labels {sizes.pool_requests} requests (${setup['teacher labelling']:,.2f} "
                  f"at ${teacher.input:.2f} in, ${teacher.output:.2f} out per 1M), {distilled.model} trains on them "
                  f"(${setup['student training']:,.2f} at ${prices(distilled.model, fine_tuned=True).training:.2f} per 1M)")
    index_tokens = len(get_encoding("o200k_base").encode(billing.code_reference()))
    big = Approach("prompting", seed["prompting_model"], prompting.input_tokens, prompting.output_tokens)
    rows = [
        ("rag_setup", "RAG set-up", seed["rag_setup"], f"$0: the course retrieves with BM25 over the {index_tokens:,}-token code table, no embeddings",
         "not priced: today's table in data/ carries no embedding model, and retrieval by words (BM25) needs none"),
        ("rag_usd_per_query", "RAG per query", f"about ${seed['rag_usd_per_query']:.2f}",
         f"${rag_query:.5f} ({rag.input_tokens:.0f} input tokens on {rag.model} at ${rag_model.input:.2f} per 1M, "
         f"{rag.output_tokens:.0f} output at ${rag_model.output:.2f})",
         f"{seed['rag_usd_per_query'] / rag_query:,.0f}x too high for this task; ${seed['rag_usd_per_query']:.2f} buys a "
         f"{tokens_for_seed:,.0f}-token prompt on {rag.model}"),
        ("rag_latency", "RAG latency", seed["rag_latency"], f"+{rag.input_tokens - sizes.short_input:.0f} input tokens a query (the retrieved "
         "codes); the search itself runs in process",
         "not measured here: +200ms is an embedding call and a vector search over a network, which BM25 in process does "
         "not make; the longer prompt's cost in time is in 04's latency columns"),
        ("distilled_usd_per_million", "a distilled model's price", f"${seed['distilled_usd_per_million']:.2f} per 1M tokens",
         f"fine-tuned {distilled.model}: ${nano.input:.2f} in, ${nano.output:.2f} out per 1M",
         f"too low: {seed['distilled_usd_per_million'] / nano.input:.0%} of today's input price and "
         f"{seed['distilled_usd_per_million'] / nano.output:.0%} of its output price for the smallest fine-tunable model"),
        ("fine_tuning_usd", "fine-tuning set-up", "${:,}-${:,}".format(*seed["fine_tuning_usd"]), tuning_text,
         _against_range(*seed["fine_tuning_usd"], tuning) + fits(tuned_model, *seed["fine_tuning_usd"])),
        ("fine_tuning_gpt41_usd", "fine-tuning GPT-4.1 set-up", "${:,}-${:,}".format(*seed["fine_tuning_gpt41_usd"]), big_tuning_text,
         _against_range(*seed["fine_tuning_gpt41_usd"], big_tuning) + fits("gpt-4.1", *seed["fine_tuning_gpt41_usd"])),
        ("distillation_approaches_usd", "distillation set-up (approaches table)", "${:,}-${:,}".format(*seed["distillation_approaches_usd"]), setup_text,
         f"{_against_range(*seed['distillation_approaches_usd'], setup['total'])}; the teacher's labelling is "
         f"{setup['teacher labelling'] / setup['total']:.0%} of it"),
        ("distillation_cost_table_usd", "distillation set-up (cost table)", "${:,}-${:,}".format(*seed["distillation_cost_table_usd"]), setup_text,
         f"{_against_range(*seed['distillation_cost_table_usd'], setup['total'])}; the outline's approaches table gives "
         "${:,}-${:,} for the same set-up".format(*seed["distillation_approaches_usd"])),
        ("prompting_model", "the prompting model", seed["prompting_model"], f"{seed['prompting_model']} ${big.per_query_usd():.5f} a query, "
         f"{prompting.model} ${prompting.per_query_usd():.5f}, before any reasoning tokens",
         f"the course prices {prompting.model}: no reasoning tokens to guess, and the family that can be fine-tuned; on "
         f"this long prompt {seed['prompting_model']} costs {big.per_query_usd() / prompting.per_query_usd():.0%} as much a "
         f"query before it reasons, and it bills reasoning as output at ${prices(big.model, fine_tuned=False).output:.2f} per 1M"),
    ]
    if fine_tuned_accuracy is not None:
        accuracy, source = fine_tuned_accuracy
        measured = not source.startswith("assumed")
        rows.append(("fine_tuning_quality", "fine-tuning's quality", f"\"{seed['fine_tuning_quality']}\"",
                     f"fine-tuned {accuracy:.0%}, {source}" if measured else "not measured yet (run 04)",
                     "a grade, not a measurement: 04 measures it, and \"domain\" stops at the codes in the training "
                     "file (04 scores the codes it never saw apart)" if measured else "a grade, not a measurement: run 04"))
    rows = [(figure, SEED_FIGURES[key][0], *rest) for key, figure, *rest in rows]  # each with its row in the outline
    return pd.DataFrame(rows, columns=["figure", "where in the outline", "the outline says", "today's table / this data",
                                       "verdict"]).set_index("figure")
