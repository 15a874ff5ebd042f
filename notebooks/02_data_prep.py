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
# # 02 · Data preparation
# **Time:** under a minute · **Cost:** $0 (validation is local; the table in 3.5 shows what training would cost on OpenAI).

# %% tags=["parameters"]
BACKEND = "local"
DATASET_PATH = "data/billing/train.jsonl"  # your own .jsonl, or a .csv with the columns below
CSV_PROMPT_COLUMN = "prompt"
CSV_COMPLETION_COLUMN = "completion"
CSV_SYSTEM_PROMPT = ""
MODEL = "gpt-4.1-mini"
VALIDATION_FRACTION = 0.2
SEED = 1

# %%
from pathlib import Path
import matplotlib.pyplot as plt
import pandas as pd
from helpers.course import setup
from helpers.data import dataprep, validate
from helpers.pricing import costs, catalogue
from helpers.paths import REPO_ROOT
course = setup("02_data_prep", BACKEND)

# %% [markdown]
# ## 1. Why
# A fine-tuning job that fails on line 4,812 after an hour in the queue, or succeeds on duplicated, truncated
# examples, wastes money and time. Checking the file first is cheap and catches nearly everything.

# %% [markdown]
# ## 2. What
# A fine-tuning file is JSON Lines: one example per line, each a chat (`messages`: system, user, assistant,
# optionally tools) or a preference pair for DPO. The validator checks every line against OpenAI's rules,
# counts tokens with the model's own tokenizer, and estimates the training cost. Each problem comes with its
# line number, a stable code and what to change.
#
# What the file says matters as much as its form. The course's answers name the procedure before its code
# (`Description - CPT Code: NNNNN`): a model writes left to right, so the five digits come after, and are
# conditioned on, the words it has just written, instead of being recalled from the request alone. The same job
# learns the codes markedly better that way (the sweep in `benchmarks/RESULTS.md` measures both orders). Order your
# own answers so that what the model can work out comes before what it must recall.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 Load the data
# A `.csv` is turned into chat examples first, with the column names from the parameters.

# %%
path = dataprep.as_jsonl(REPO_ROOT / DATASET_PATH, REPO_ROOT / ".workbook" / "data", prompt_column=CSV_PROMPT_COLUMN,
                         completion_column=CSV_COMPLETION_COLUMN, system_prompt=CSV_SYSTEM_PROMPT)
report = validate.validate_file(path, model=MODEL)
course.record(ok=report.ok, n_examples=report.n_examples, total_tokens=report.total_tokens, format=report.format)
print(report.summary())

# %% [markdown]
# ### 3.2 What a broken file looks like
# `data/billing/flawed.jsonl` breaks one rule per line. Each row says where and what to change.

# %% tags=["nbval-check-output"]
flawed = validate.validate_file(REPO_ROOT / "data/billing/flawed.jsonl", model=MODEL)
course.record(flawed_error_codes=sorted(flawed.stats["error_counts"]))
flawed.problems_frame()

# %% [markdown]
# Fixes, in order of how often they bite: save as UTF-8 (line 15); one complete JSON object per line (5, 9,
# 17); roles are `system`, `user`, `assistant`, `tool` (6); every example ends with the assistant reply you
# want (4); `weight` is 0 or 1 and only on assistant messages (7, 8); tool-call `arguments` are a JSON string
# (10) and a `tool` message answers a call made earlier in the same example (11).

# %% [markdown]
# ### 3.3 Token statistics
# Per example: min, mean, median, the true 5th and 95th percentiles, and max. Long outliers cost money and
# may be truncated.

# %%
stats = pd.DataFrame({k: report.stats[k] for k in ("messages_per_example", "total_tokens_per_example", "assistant_tokens_per_example")})
stats

# %%
hist = report.histograms["total_tokens"]
figure, axis = plt.subplots()
axis.bar(list(hist), list(hist.values()), width=1.0)
axis.set(xlabel="tokens per example", ylabel="examples", title=f"{Path(path).name}: {report.n_examples} examples")
plt.show()

# %% [markdown]
# ### 3.4 Duplicates and gaps

# %%
{k: report.stats[k] for k in ("exact_duplicates", "near_duplicates", "missing_system", "missing_user", "over_token_limit")}

# %% [markdown]
# ### 3.5 What training would cost on OpenAI
# Billing tokens per epoch (each example capped at the model's limit) x epochs ("auto": OpenAI's rule) x the
# training price, for every model priced per token.

# %%
rows = []
for model in ("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini"):
    estimate = costs.estimate_training_cost(model, report.stats["billing_tokens_per_epoch"], report.stats["valid_examples"])
    rows.append(estimate.as_dict())
estimates = pd.DataFrame(rows).set_index("model")
course.record(training_cost_usd=estimates["cost_usd"].to_dict())
estimates

# %% [markdown]
# ### 3.6 Split off a validation set
# A validation file lets the job report validation loss, which tells you when the model starts to overfit.

# %%
train_path, valid_path = dataprep.split_file(path, REPO_ROOT / ".workbook" / "data", VALIDATION_FRACTION, SEED)
split = {p.name: validate.validate_file(p, model=MODEL, min_examples=1).n_examples for p in (train_path, valid_path)}
course.record(split=split)
split

# %% [markdown]
# ## 4. Summary
# - Validate before you upload: every problem has a line number and a fix.
# - Count tokens with the model's own encoding (`o200k_base` for GPT-4o and GPT-4.1), not `cl100k_base`.
# - The cost of training is tokens x epochs x price; the course data costs cents, not dollars.
#
# **Exercises.** (1) Copy `flawed.jsonl`, fix it line by line, and validate until it is ready. (2) Run this
# notebook on your own data: `workbook report 02_data_prep -p DATASET_PATH my_data.csv -p CSV_PROMPT_COLUMN question`.
