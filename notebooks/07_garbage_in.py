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
# # 07 · Garbage in, garbage out
# **Time:** about 9 minutes on a 2-core CPU without bf16 kernels (fp32), about 3 with them; at course size (one more job) about 4 with them · **Cost:** $0 locally; on OpenAI, one training run of the same size per file (3.2 prints their prices).

# %% tags=["parameters"]
BACKEND = "local"
MODEL = "gpt-4.1-mini"
N_CODES = 8  # procedures to train on, drawn with SEED (0 means all 37); each has 9 training examples
CORRUPTED_SHARES = [0.0, 0.4]  # share of training labels made wrong (in the right format), one job each; course size adds 0.15
SYSTEMATIC = True  # wrong labels fill whole procedures, each always given the same other code (False: spread at random)
PADDED_SHARE = 0.5  # one more job: a file of the same size where this share are near-duplicates of the rest (0: none)
N_EPOCHS = 3
SEED = 1
MAX_TOKENS = 32

# %%
import pandas as pd
from helpers.course import setup, experiments, label_audit
from helpers.paths import REPO_ROOT
course = setup("07_garbage_in", BACKEND)
work = REPO_ROOT / ".workbook" / "data" / "garbage_in"

# %% [markdown]
# ## 1. Why
# "Garbage in, expensive garbage out": a fine-tuned model learns whatever its examples say, including what they say
# wrongly, and you pay for every training token either way. Notebook 02's validator catches broken files. It cannot
# catch a label that is well formed and wrong. This notebook measures what such labels cost and shows two cheap
# audits that find them.

# %% [markdown]
# ## 2. What
# - **Corrupted labels.** A share of the training answers are replaced by wrong ones in the right format. Half have
#   the code swapped for another course code, the description kept (a copy-paste from the row above). The other
#   half carry another procedure's whole answer (a row labelled from the wrong chart). With `SYSTEMATIC`, the errors
#   are a person's: a coder who mixes two procedures up labels every example of one with the other's code, so the
#   wrong labels fill whole procedures (the last one only partly, to make the share exact). Without it they are
#   spread at random over all procedures, a few in each.
# - **Padding.** A file of the same size where some examples are near-duplicates of others: the same request up to
#   case, spacing or punctuation. It looks as big and costs as much, and it holds fewer distinct requests.
# - **The experiment.** The same `N_CODES` procedures, the same epochs and seed; only the labels change. Each model is
#   scored on held-out requests for those procedures (the test and validation files: phrasings it never trained
#   on; no validation file is needed for training here). With `N_CODES` procedures a model that guesses scores about
#   1 / `N_CODES`.
# - **The audits.** Two checks that need no model: does the label's description go with its code in the code table,
#   and is the labelled code among the five codes retrieval (notebook 04) finds for the request?

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 The files
# One training file per corrupted share, and the padded one. A corrupted row, before and after:

# %%
codes = experiments.pick_codes(N_CODES, SEED)
clean = experiments.for_codes(REPO_ROOT / "data/billing/train.jsonl", codes)
test = experiments.held_out(codes)
variants = label_audit.make_variants(clean, CORRUPTED_SHARES, PADDED_SHARE, SEED, SYSTEMATIC)
files = experiments.write_variants(variants.rows, work, "train")
label_audit.corrupted_examples(clean, variants)

# %% [markdown]
# ### 3.2 The validator passes them all
# Format, roles, lengths, tokens: every corrupted file is as valid as the clean one, because nothing in its format is
# wrong. The padded file passes too; the validator warns about each of its copies.

# %%
checks = experiments.validation_table(files, model=MODEL, n_epochs=N_EPOCHS)
course.record(validator_passes=checks.loc["passes"].to_dict(), n_examples=len(clean), n_codes=len(codes), n_test=len(test),
              duplicate_warnings=checks.loc["duplicate warnings"].to_dict())
checks

# %% [markdown]
# ### 3.3 Train one model per file
# The jobs start together and the server trains them one after another, a progress bar each. On OpenAI, each would
# cost the price in the table above: the same for garbage as for gold.

# %%
hyperparameters = {name: {"n_epochs": N_EPOCHS} for name in files}
jobs = experiments.wait_for(course.client, experiments.start_jobs(course.client, files, validation_file=None, model=MODEL,
                                                                   hyperparameters=hyperparameters, seed=SEED, lesson="garbage_in"))
course.record(trained_tokens={name: job.trained_tokens for name, job in jobs.items()})

# %% [markdown]
# ### 3.4 Score them on the same held-out requests

# %%
scores = experiments.score(course.client, {name: job.fine_tuned_model for name, job in jobs.items()}, test, priced_as=MODEL,
                           max_tokens=MAX_TOKENS)
course.record(scores=scores.to_dict())
scores.loc[["code_accuracy", "code_accuracy_ci_low", "code_accuracy_ci_high", "exact_match", "format_compliance"]].round(3)

# %%
taught = label_audit.taught_wrong(variants, test)
course.record(taught_wrong=taught)
course.findings("noise", label_audit.noise_findings(scores.to_dict(), CORRUPTED_SHARES, PADDED_SHARE, variants.distinct, len(clean),
                                                    SYSTEMATIC, taught))

# %% [markdown]
# ### 3.5 Audit the labels before training
# Both checks run on the most corrupted file, against the list of rows we corrupted (which a real audit does not
# have: that is how we can score the audit).

# %%
audited = label_audit.audit(variants.rows[variants.worst])
found = label_audit.audit_scores(audited, variants.corrupted[variants.worst])
course.record(audit=found.to_dict(orient="index"), audit_corrupted=found.attrs["corrupted"])
course.findings("audit", label_audit.audit_findings(found))
found

# %% [markdown]
# The first rows the checks flag, to read by hand:

# %%
audited[audited["flagged"]].head(8)[["line", "request", "label", "table_ok", "retrieval_ok"]]

# %% [markdown]
# ## 4. Summary
# - The validator checks form, not facts. Wrong labels in the right format pass every check of notebook 02, and they
#   cost the same to train on.
# - Measure what the wrong labels cost on held-out requests (3.4), and audit labels before training: cross-check
#   them against a reference (the code table) and against a second opinion (retrieval here; a stronger model, as
#   05's teacher, when you can pay for it). Read the flagged rows; do not delete them blind.
# - Near-duplicates make a file look bigger and cost as much to train as real examples; they add no new phrasing.
#   Deduplicate (02's validator lists them), and read 3.4 for what the padded file did here.
#
# **Exercises.** (1) Set `CORRUPTED_SHARES = [0.0, 0.15, 0.4, 0.7]`: where does the model stop learning the right
# codes? (2) Set `SYSTEMATIC = False`, so that the wrong labels are spread over every procedure, each naming a random
# other code: does the damage wash out?
# (3) Run the audit on `data/billing/train.jsonl` as it is: which clean rows does retrieval flag, and why?
