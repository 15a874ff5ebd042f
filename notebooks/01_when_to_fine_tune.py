# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · When to fine-tune
# **Time:** under a minute · **Cost:** $0 (no API calls; every price comes from `data/prices.json`).

# %% tags=["parameters"]
BACKEND = "local"
QUERIES_PER_MONTH = 100_000
VOLUMES = [1_000, 10_000, 100_000, 1_000_000]
RETRAINS_PER_YEAR = 4
CLAIM_LOW_USD = 50
CLAIM_HIGH_USD = 500
ASSUMED_ACCURACY = 0.8  # for approaches 04/05 have not measured yet on this machine

# %%
import pandas as pd
from helpers.course import setup
from helpers.pricing import costs
from helpers.course import scenarios, decision
course = setup("01_when_to_fine_tune", BACKEND)

# %% [markdown]
# ## 1. Why
# Fine-tuning is not the first thing to try. A better prompt costs nothing to set up; retrieval (RAG) adds
# facts the model cannot know; fine-tuning teaches a format, a style or a narrow skill; distillation moves a
# big model's skill into a small, cheap one. Each rung costs more up front, and pays back only at enough volume.

# %% [markdown]
# ## 2. What
# ### 2.1 The ladder, as rules you can argue with

# %% tags=["nbval-check-output"]
tasks = [
    decision.Task("one-off report summaries", True, False, False, 0, 2_000),
    decision.Task("answers from our internal wiki", False, True, False, 20, 50_000),
    decision.Task("medical billing codes, strict format", False, True, True, 333, 300_000),
    decision.Task("support triage a big model does well", True, False, True, 5_000, 2_000_000),
]
pd.DataFrame([(t.name, *decision.recommend(t)) for t in tasks], columns=["task", "next rung", "why"]).set_index("task")

# %% [markdown]
# ### 2.2 What each rung costs
# OpenAI's prices, dated, with a source for every row. Fine-tuned models cost more per token than their base
# models; training is paid per token per epoch (an *epoch* is one pass over the whole training file).

# %% tags=["nbval-check-output"]
print(f"Prices as of {costs.price_table()['as_of']}. {costs.price_table()['notice']}")
costs.prices_frame()

# %% [markdown]
# ## 3. Hands-on: price the billing task four ways
# ### 3.1 Measure the prompts
# Token counts of real prompts for the course's test requests (tiktoken, `o200k_base`): prompting carries the
# whole code table and 20 worked examples; RAG carries five retrieved codes; the fine-tuned and distilled
# models need only the one-line instruction.

# %% tags=["nbval-check-output"]
sizes = scenarios.measure_prompt_sizes()
course.record(prompt_sizes=sizes.__dict__)
sizes

# %% [markdown]
# ### 3.2 Monthly cost at several volumes, and where the lines cross
# Training is paid `RETRAINS_PER_YEAR` times a year and spread over the months. Distillation's set-up is the
# teacher (the prompting approach's model and prompt) labelling the pool's requests, plus the student's training.

# %% tags=["nbval-check-output"]
approaches = scenarios.course_approaches(sizes, retrains_per_year=RETRAINS_PER_YEAR)
table = scenarios.scenario_table(approaches, VOLUMES)
course.record(monthly_cost=table.drop(columns="cheapest").to_dict())
table

# %% tags=["nbval-check-output"]
break_even = scenarios.break_even_table(approaches)
course.record(break_even=break_even["cheaper_than_prompting_from"].to_dict())
break_even

# %% [markdown]
# ### 3.3 Explore
# Move the sliders: the chart and the break-even points follow. (In a saved notebook or an HTML report the sliders
# are not live; the static copy below shows the parameters' values.)

# %%
from helpers.course.widgets import CostExplorer
explorer = CostExplorer(sizes)
explorer.queries.value = QUERIES_PER_MONTH
explorer.retrains.value = RETRAINS_PER_YEAR
explorer.show()

# %% [markdown]
# At the parameters' values, as plain output:

# %%
explorer.static();

# %% [markdown]
# ### 3.4 Check a claim: "fine-tuning GPT-4.1-mini costs $50-$500"
# How many training examples does that budget buy, at the course's measured example size and at longer ones?

# %% tags=["nbval-check-output"]
claim = pd.DataFrame([
    {"tokens_per_example": n,
     f"examples for ${CLAIM_LOW_USD}": scenarios.examples_for_budget("gpt-4.1-mini", CLAIM_LOW_USD, n),
     f"examples for ${CLAIM_HIGH_USD}": scenarios.examples_for_budget("gpt-4.1-mini", CLAIM_HIGH_USD, n)}
    for n in (sizes.train_tokens_per_example, 500, 2_000)]).set_index("tokens_per_example")
course.record(course_training_cost_usd=costs.training_cost("gpt-4.1-mini", sizes.train_examples, sizes.train_tokens_per_example))
claim

# %% [markdown]
# ### 3.5 Price per correct answer
# A wrong answer costs as much as a right one. Dividing the price per query by the accuracy gives the price of
# what you want: a correct answer. Accuracies come from 04 and 05 when they have run on this machine (the local
# stand-in, priced as the OpenAI model it replaces), otherwise from `ASSUMED_ACCURACY`, labelled so.

# %%
from helpers.course import recorded_metrics
accuracy = scenarios.measured_accuracy({name: recorded_metrics(name) for name in ("04_inference_and_eval", "05_distillation")},
                                       ASSUMED_ACCURACY)
per_correct = scenarios.per_correct_answer(approaches, accuracy)
course.record(per_correct=per_correct.to_dict(orient="index"))
per_correct.round(4)

# %% [markdown]
# ### 3.6 The outline's figures against today's price table
# The course outline this workbook grew from (its seed) quotes figures of its own, in two tables (set-up cost per
# approach; set-up, latency and quality per approach) and in its text. Each figure is set against today's price
# table and this data, with the row it comes from and the per-token price its verdict rests on:

# %%
seed_check = scenarios.seed_figures(sizes, approaches, accuracy["fine-tuned"])
course.record(seed_figures=seed_check.to_dict(orient="index"))
seed_check

# %% [markdown]
# ## 4. Summary
# What the tables above show, written from their numbers (change a parameter and the sentences follow):

# %%
course.findings("costs", scenarios.cost_findings(table, approaches) + scenarios.claim_findings(sizes, CLAIM_LOW_USD, CLAIM_HIGH_USD))
course.findings("per correct answer", scenarios.per_correct_findings(per_correct))

# %% [markdown]
# - Each rung fixes a different problem: retrieval brings facts the model cannot know, fine-tuning a format
#   and a narrow skill, distillation a big model's skill at a small model's price.
# - Price a configuration only once you know it works: notebook 04 measures what the tuned model gets right.
#
# **Exercises.** (1) Set `RETRAINS_PER_YEAR = 52` (weekly): where does fine-tuning stop paying? (2) Raise the
# input tokens slider to 2,000 (a long document per query): which approach wins now, and why?
