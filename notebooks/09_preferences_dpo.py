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
# # 09 · Preferences with DPO
# **Time:** about 7 minutes on a 2-core CPU without bf16 kernels (fp32), about 2 with them (`make reports` runs the same) · **Cost:** $0 locally; on OpenAI, two training runs (3.1 prints their estimates) and 2 x the held-out requests.

# %% tags=["parameters"]
BACKEND = "local"
MODEL = "gpt-4.1-mini"
N_CODES = 8  # procedures, drawn with SEED (0 means all 37); each has 9 training examples
MIXED_SHARE = 0.5  # share of the supervised answers written in another style (as a team with many hands writes them)
REJECTED_STYLES = ["chatty", "code first", "code only"]  # the styles a billing system cannot read
SFT_EPOCHS = 3
DPO_EPOCHS = 1  # one pass over the pairs; exercise (5) tries two
BETA = 0.1  # how far DPO may pull the model away from where it started (smaller: further)
SEED = 1
MAX_TOKENS = 48

# %%
import pandas as pd
from helpers.course import setup, evaluation, experiments, finetune, preferences
from helpers.data import validate
from helpers.data.dataprep import write_jsonl
from helpers.paths import REPO_ROOT
course = setup("09_preferences_dpo", BACKEND)
work = REPO_ROOT / ".workbook" / "data" / "preferences"

# %% [markdown]
# ## 1. Why
# Supervised fine-tuning (SFT) imitates every answer in its file, the ones you would rather it did not write
# included. Real files are written by many hands: some answers are in the form your billing system reads, some are
# chatty, some put the code first. Rewriting thousands of answers is slow; saying which of two answers is better is
# quick. **Direct Preference Optimization (DPO)** trains on exactly that: pairs of answers to the same request, one
# preferred. OpenAI offers three methods: SFT (examples of the right answer), DPO (a better and a worse answer) and
# reinforcement fine-tuning (a grader scores the model's answers; reasoning models only). Its advice, which this
# notebook follows: SFT first, then DPO on the model SFT made.

# %% [markdown]
# ## 2. What
# - **The starting model**: SFT on the course examples of `N_CODES` procedures, where a share `MIXED_SHARE` of the
#   answers are written in another style (same code, a form the parser of notebook 04 rejects).
# - **The preference file**: for the same requests, the course's form (`preferred_output`) against another style
#   (`non_preferred_output`); OpenAI's format, which notebook 02's validator checks.
# - **The DPO job**: `method={"type": "dpo", "dpo": {"hyperparameters": {"beta": BETA}}}`, with `model=` the SFT model
#   (a job can start from a fine-tuned model). DPO raises the log-probability of the preferred answer relative to the
#   other one, *measured against the model it starts from* (the reference). `beta` sets how much a gap counts: a
#   small `beta` lets the model move far from the reference, a large one keeps it close.
# - **The measures**, on held-out requests (the test and validation files for those procedures): format compliance,
#   code accuracy (the right code in the form the billing system reads), the right code in *any* style (a chatty
#   "bill it under CPT code 93306" names 93306), the style of each answer, and a judge that compares the two models
#   request by request on two questions apart: **form** (can the billing system read it?) and **facts** (is the code
#   right?). An answer in the form with a wrong code wins on form and loses on facts. Each side gets a win rate
#   (ties count half; 0.5 means no change).

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 Two files from the same requests

# %%
codes = experiments.pick_codes(N_CODES, SEED)
clean = experiments.for_codes(REPO_ROOT / "data/billing/train.jsonl", codes)
test = experiments.held_out(codes)
pairs = preferences.preference_pairs(clean, SEED, tuple(REJECTED_STYLES))
mixed, rewritten = preferences.mixed_styles(clean, pairs, MIXED_SHARE, SEED)
sft_path, pairs_path = write_jsonl(mixed, work / "mixed.jsonl"), write_jsonl(pairs, work / "pairs.jsonl")
reports = {"supervised (mixed styles)": validate.validate_file(sft_path, model=MODEL, n_epochs=SFT_EPOCHS),
           "preferences": validate.validate_file(pairs_path, model=MODEL, n_epochs=DPO_EPOCHS)}
course.record(n_codes=len(codes), n_examples=len(clean), n_rewritten=rewritten, n_test=len(test),
              formats={name: r.format for name, r in reports.items()}, ready=all(r.ok for r in reports.values()))
for name, report in reports.items():
    print(f"{name}: {report.summary()}\n")
pd.DataFrame([{"request": p["input"]["messages"][-1]["content"], "preferred": p["preferred_output"][0]["content"],
               "not preferred": p["non_preferred_output"][0]["content"]} for p in pairs[:4]])

# %% [markdown]
# ### 3.2 The starting model: SFT on the mixed file

# %%
sft = finetune.start_job(course.client, training_file=finetune.upload(course.client, sft_path).id, model=MODEL, seed=SEED,
                         suffix="mixed-styles", metadata={"course": "preferences", "variant": "sft"},
                         hyperparameters={"n_epochs": SFT_EPOCHS})
sft = finetune.follow(course.client, sft.id, show_events=False)
before = evaluation.evaluate(course.client, sft.fine_tuned_model, test, max_tokens=MAX_TOKENS)
course.record(sft_status=sft.status, sft_model=sft.fine_tuned_model)
print(sft.status, sft.fine_tuned_model)

# %% [markdown]
# ### 3.3 DPO, starting from that model

# %%
dpo = finetune.start_job(course.client, training_file=finetune.upload(course.client, pairs_path).id, model=sft.fine_tuned_model,
                         seed=SEED, suffix="preferred", metadata={"course": "preferences", "variant": "dpo"},
                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": BETA, "n_epochs": DPO_EPOCHS}}})
dpo = finetune.follow(course.client, dpo.id, show_events=False)
steps = finetune.results_frame(course.client, dpo)
course.record(dpo_status=dpo.status, dpo_model=dpo.fine_tuned_model, dpo_hyperparameters=dpo.method.dpo.hyperparameters.model_dump(),
              first_dpo_loss=steps["train_loss"].iloc[0], last_dpo_loss=steps["train_loss"].iloc[-1])
course.findings("curve", preferences.dpo_curve_findings(steps, BETA))
steps.plot(x="step", y=["train_loss", "train_accuracy"], secondary_y="train_accuracy", figsize=(7, 3),
           title="DPO: loss (left) and reward accuracy (right) per step");

# %% [markdown]
# ### 3.4 Before and after, on held-out requests

# %%
after = evaluation.evaluate(course.client, dpo.fine_tuned_model, test, max_tokens=MAX_TOKENS)
summary = {name: preferences.summarize(frame, priced_as=MODEL) for name, frame in (("SFT", before), ("SFT + DPO", after))}
match = preferences.head_to_head(after, before)
course.record(before=summary["SFT"], after=summary["SFT + DPO"], head_to_head=match)
course.findings("dpo", preferences.dpo_findings(summary["SFT"], summary["SFT + DPO"], match, BETA))
preferences.before_after_table(summary, {"SFT": before, "SFT + DPO": after}).round(3)

# %% [markdown]
# The requests where the two models differ, judged on form and on facts apart (the facts' losses first):

# %%
preferences.verdicts(after, before)

# %% [markdown]
# ## 4. Summary
# - SFT learns what its examples show, every style in them. DPO learns which of two answers is better, from pairs you
#   can label faster than you can rewrite answers.
# - Start DPO from a model that already writes both kinds of answer (an SFT model): DPO moves probability between
#   answers the model can write; it does not teach it to write new ones. The reference is that starting model, and
#   `beta` sets how far the model may move from it.
# - Judge the result on held-out requests with rules you wrote down before training, form and facts apart (here: can
#   the billing system read it; does it name the right code in any style), and count wins, ties and losses on each,
#   not only the average: a better form can hide a worse fact.
# - When you can write the right answer, SFT on clean data is simpler; when you can only say which answer is
#   better (tone, length, form), DPO fits; when a program can grade an answer, reinforcement fine-tuning is the third way.
#
# **Exercises.** (1) Start the DPO job from `MODEL` (the base) instead of the SFT model: what do its answers look like?
# (2) Try `BETA = 0.5` and `BETA = 0.02`. (3) Add `"learning_rate_multiplier": 0.5` to the DPO hyperparameters (ten
# times the local default) and read the answers. (4) Rewrite the mixed file's answers in the course form and train SFT
# on it: how does that model compare with SFT + DPO, and which would you choose for 10,000 historical answers?
# (5) Set `DPO_EPOCHS = 2`: read the form and the facts rows of the table, and the answers the judge lists first.
