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
# # 06 · Epochs, learning rates and overfitting
# **Time:** about 11 minutes on a 2-core CPU without bf16 kernels (fp32), about 3.5 with them (four short jobs; `make reports` runs the same) · **Cost:** $0 locally; on OpenAI, four small training runs (3.1 prints their prices).

# %% tags=["parameters"]
BACKEND = "local"
MODEL = "gpt-4.1-mini"
N_CODES = 12  # procedures to train on, drawn with SEED (0 means all 37)
EXAMPLES_PER_CODE = 3  # training examples of each (at most 9): few examples, where epochs matter most
EXCESSIVE_EPOCHS = 8  # far more than auto: does the model memorise?
LEARNING_RATE_MULTIPLIERS = [4.0, 10.0]  # one run each at the auto epochs; the local "auto" multiplier is 2
SEED = 1
MAX_TOKENS = 32

# %%
from helpers.course import setup, experiments, fitting
from helpers.data.dataprep import write_jsonl
from helpers.paths import REPO_ROOT
course = setup("06_hyperparameters", BACKEND)
work = REPO_ROOT / ".workbook" / "data" / "hyperparameters"

# %% [markdown]
# ## 1. Why
# Notebook 03 trained with the service's defaults. Those are a good start, not a guarantee: too little training and
# the model has not learned the task yet; too much and it learns the training examples themselves, phrasing by
# phrasing, and gets no better (or worse) at requests it has not seen. Each run costs money on OpenAI and minutes
# here, so it pays to know what the curves say before you buy another one.

# %% [markdown]
# ## 2. What
# - **Epochs**: passes over the training file. **Learning-rate multiplier**: scales the size of each step (locally the
#   step is 2e-3 times it).
# - **Underfitting**: validation loss still falling when the job ends; accuracy still climbing.
# - **A good fit**: validation loss flattens at its lowest; held-out accuracy at its best.
# - **Memorising** (overfitting): training loss keeps falling while validation loss stops falling, or turns up;
#   held-out accuracy stops improving and may fall. The extra epochs learn the training examples by heart.
# - **Too large a step**: the loss jumps or rises; the model can forget the format itself.
#
# Four runs on the same data, `EXAMPLES_PER_CODE` examples of each of `N_CODES` procedures: OpenAI's "auto" epochs,
# `EXCESSIVE_EPOCHS`, and "auto" epochs with each of `LEARNING_RATE_MULTIPLIERS` (a step twice and five times the
# local default). Every job scores the whole validation file at each epoch's end, and keeps its last three checkpoints
# as models you can call (as OpenAI keeps them): each is scored on the held-out test requests for those procedures.
# With `N_CODES` procedures a model that guesses scores about 1 / `N_CODES`; the findings say where a run is no better.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 The runs
# What OpenAI's "auto" picks depends only on the file's size:

# %%
print(fitting.AUTO_RULE)
codes = experiments.pick_codes(N_CODES, SEED)
train = write_jsonl(experiments.for_codes(REPO_ROOT / "data/billing/train.jsonl", codes, EXAMPLES_PER_CODE), work / "train.jsonl")
valid = write_jsonl(experiments.for_codes(REPO_ROOT / "data/billing/validation.jsonl", codes), work / "validation.jsonl")
test = experiments.for_codes(REPO_ROOT / "data/billing/test.jsonl", codes, per_code=2)
runs = fitting.runs(EXCESSIVE_EPOCHS, LEARNING_RATE_MULTIPLIERS)
course.record(n_codes=len(codes), n_test=len(test), runs=runs)
fitting.auto_epochs_table([20, 60, 100, 333, 1_000, 10_000, 100_000])

# %% [markdown]
# The runs, their epochs and what each would cost on OpenAI (the file passes notebook 02's validator):

# %%
fitting.price_table(train, runs, MODEL)

# %% [markdown]
# ### 3.2 Train them
# The jobs start together and the server trains them one after another.

# %%
jobs = experiments.wait_for(course.client, experiments.start_jobs(course.client, {name: train for name in runs}, validation_file=valid,
                                                                   model=MODEL, hyperparameters=runs, seed=SEED, lesson="hyperparameters"))
course.record(epochs={name: job.hyperparameters.n_epochs for name, job in jobs.items()},
              trained_tokens={name: job.trained_tokens for name, job in jobs.items()})

# %% [markdown]
# ### 3.3 The curves
# Validation loss of the whole file after every epoch (read from the job's events, so also for epochs whose
# checkpoint is gone), and held-out accuracy: of every kept checkpoint of the "auto" and the excessive runs, and of
# the final model of the others.

# %%
losses = {name: fitting.epoch_losses(course.client, job.id) for name, job in jobs.items()}
accuracy = fitting.checkpoint_accuracy(course.client, jobs, test, every_checkpoint=(fitting.AUTO_RUN, fitting.excessive_run(EXCESSIVE_EPOCHS)),
                                       max_tokens=MAX_TOKENS)
course.record(full_valid_loss={name: frame["full_valid_loss"].tolist() for name, frame in losses.items()},
              checkpoint_accuracy=accuracy.drop(columns="model").to_dict(orient="records"))
fitting.plot_fits(losses, accuracy);

# %%
table = fitting.fit_table(losses, accuracy)
course.record(fit=table.to_dict(orient="index"))
table

# %%
course.findings("fit", fitting.fit_findings(table, baseline=fitting.AUTO_RUN, chance=1 / len(codes)))

# %% [markdown]
# ## 4. Summary
# A rule of thumb to carry to OpenAI (or any service):
# - Start with "auto" and a validation file. Judge the fit on the whole-file validation loss, one point per epoch, and
#   on held-out accuracy, not on training loss.
# - Still falling at the end: add epochs. A tiny file is where "auto" falls short most often. Turned up: use the
#   checkpoint at the turn if it is among the last three a job keeps, else train again with the turn's epochs; more
#   *different* examples help more than more passes.
# - Loss jumping, or the format breaking: lower the learning-rate multiplier. Learning too slowly: raise it a step
#   (x2), not tenfold.
# - Change one thing per run, and keep each run's numbers: this notebook's table is that habit.
#
# **Exercises.** (1) Set `N_CODES = 0`: with three times the codes, does "auto" still fall short? (2) Try
# `LEARNING_RATE_MULTIPLIERS = [0.1]`: what does a step too small look like? (3) Call the best checkpoint of the
# excessive run by name in notebook 04 (`TUNED_MODEL`).
