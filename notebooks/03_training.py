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
# # 03 · Training
# **Time:** about 11 minutes on a 2-core CPU without bf16 kernels (fp32), about 4 with them; at course size (3 epochs) about 18 and 5 · **Cost:** $0 locally; on OpenAI, the estimate printed in 3.1 (the budget guard refuses anything above `MAX_SPEND_USD`).

# %% tags=["parameters"]
BACKEND = "local"
MODEL = "gpt-4.1-mini"
TRAIN_PATH = "data/billing/train.jsonl"
VALID_PATH = "data/billing/validation.jsonl"
N_TRAIN = 0  # examples to train on (0 means all; fewer than all learns few codes in 2 epochs)
N_VALID = 12  # 0 means all
N_EPOCHS = 2  # or "auto" (OpenAI's rule: 3 for the whole set)
BATCH_SIZE = "auto"  # the local server picks 4
RAG_SHARE = 0.25  # share of training examples that carry retrieved candidate codes in their prompt
RENUMBERED_SHARE = 0.5  # share of those whose answer can only be copied from the candidates (see 3.1)
RETRIEVED_CODES = 5
SUFFIX = "billing"
SEED = 1
MAX_SPEND_USD = 1.0

# %%
from helpers.course import setup, billing, finetune, retrieval
from helpers.data import dataprep, validate
from helpers.paths import REPO_ROOT
course = setup("03_training", BACKEND)
work = REPO_ROOT / ".workbook" / "data"

# %% [markdown]
# ## 1. Why
# The data is ready (notebook 02). Training is where time and money go, so start small, watch the curves,
# and stop early if something is off.

# %% [markdown]
# ## 2. What
# A fine-tuning **job** takes an uploaded training file (and optionally a validation file), a base model and a
# few hyperparameters. It moves through `validating_files -> queued -> running -> succeeded`, reports a loss
# per step, saves a checkpoint per epoch and finally names a new model, `ft:<base>:<org>:<suffix>:<id>`, that
# you call like any other. Epochs are full passes over the data; the batch size is how many examples each
# step sees; the *learning-rate multiplier* scales the step size the service would use by default (locally, the
# step size is 2e-3 times it; "auto" picks 2).
#
# What trains: not the model's 135 million weights but an *adapter*. *LoRA* (low-rank adaptation) adds to each
# weight matrix the product of two thin matrices (rank 16 here), and only those learn: a few million numbers,
# saved beside the base model and added to it when the fine-tuned model answers. OpenAI does not say how it
# trains; the API is the same either way.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 Check the files and the budget
# A quarter of the training examples (`RAG_SHARE`) get the five codes retrieval finds for them in their prompt
# (retrieval here is BM25: a keyword search that scores each code's index entry by the request's words, rare
# words counting more),
# so the model learns to use retrieved codes as well as to answer from the one-line prompt: notebook 04 shows why.
# Why a quarter, not all: those examples are about twice as long, so every one of them makes the job longer,
# and the plain requests are what most of the test asks.
#
# > **On the local stand-in (SmolLM2-135M).** A model learns only what its examples make it do. For a code it
# > trains on, it can write the answer from memory whether candidates are there or not, so plain candidates teach it
# > little about using them. So in half of those examples (`RENUMBERED_SHARE`) the right candidate is *renumbered*:
# > it appears under one of the procedure's own phrasings and a number no CPT code uses (02000-09999), and the
# > answer is that line. Memory cannot give it; only copying can, which is what a code it never trained on needs. It
# > is also what a code book changing from one year to the next needs: the answer follows the catalogue in the
# > prompt. Notebook 04 measures what the tuned model then does with retrieved codes for codes it never trained on
# > (`benchmarks/RESULTS.md` compares runs without renumbering). Why only half: the other half keep the real code's
# > line, so the model also learns when its memory should overrule a candidate. Trained to copy in every one of
# > them, it also copied when retrieval put a wrong code first, and as 05's teacher it did worse with candidates
# > than without (`benchmarks/RESULTS.md`). **On OpenAI or a bigger model:** a larger model may use the candidates in
# > its prompt from the instruction alone; measure it there with `RENUMBERED_SHARE = 0`, and 04's retrieval columns
# > show whether copying still has to be trained in.

# %%
subset, valid_path = dataprep.take(REPO_ROOT / TRAIN_PATH, N_TRAIN, work), dataprep.take(REPO_ROOT / VALID_PATH, N_VALID, work)
train_path = work / f"{subset.stem}_rag.jsonl"
augmented = retrieval.augment_file(subset, train_path, RAG_SHARE, RETRIEVED_CODES, SEED, RENUMBERED_SHARE)
report = validate.validate_file(train_path, model=MODEL, n_epochs=N_EPOCHS)  # its cost line: this job's epochs
course.record(n_train=report.n_examples, n_with_retrieved_codes=augmented.with_codes, n_renumbered=augmented.renumbered,
              rag_share=RAG_SHARE, estimated_cost_usd=report.cost["cost_usd"], ready=report.ok)
print(train_path.read_text(encoding="utf-8").splitlines()[0][:400])  # one training example, as the API receives it
print(report.summary())
print(finetune.budget_guard(course.backend, report.cost["cost_usd"], MAX_SPEND_USD))

# %% [markdown]
# ### 3.2 Upload and start the job
# Two API calls: `client.files.create` uploads each file, and `client.fine_tuning.jobs.create` starts the job:
# ```python
# job = client.fine_tuning.jobs.create(training_file=..., validation_file=..., model=MODEL, suffix=SUFFIX, seed=SEED,
#                                      hyperparameters={"n_epochs": N_EPOCHS, "batch_size": BATCH_SIZE})
# ```
# The course calls the second through `finetune.start_job`, which makes that very call and turns the two refusals a
# learner meets into a sentence instead of a traceback: OpenAI's 403 after the wind-down (notebook 10 shows what the
# client itself raises) and a busy workshop server's 429.

# %%
with open(train_path, "rb") as handle:
    train_file = course.client.files.create(file=handle, purpose="fine-tune")
with open(valid_path, "rb") as handle:
    valid_file = course.client.files.create(file=handle, purpose="fine-tune")
job = finetune.start_job(course.client, training_file=train_file.id, validation_file=valid_file.id, model=MODEL,
                         suffix=SUFFIX, seed=SEED, metadata=finetune.COURSE_METADATA,
                         hyperparameters={"n_epochs": N_EPOCHS, "batch_size": BATCH_SIZE})
print(job.id, job.status)

# %% [markdown]
# ### 3.3 Follow it
# The bar counts training steps; the job's own messages are printed as they arrive. The job runs on the server,
# not in this kernel: if the kernel restarts, run the set-up cell and then
# `job = finetune.follow(course.client, finetune.latest_job(course.client, finetune.COURSE_METADATA).id)`.

# %%
job = finetune.follow(course.client, job.id)
course.record(status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
              hyperparameters=job.hyperparameters.model_dump())
print(job.status, job.fine_tuned_model, "trained tokens:", job.trained_tokens)

# %% [markdown]
# `finetune.follow` reads the job's events as they arrive; the plain call is `client.fine_tuning.jobs.list_events`
# (newest first). The job's last three messages:

# %%
for event in course.client.fine_tuning.jobs.list_events(job.id, limit=3):
    print(event.level, event.message)

# %% [markdown]
# ### 3.4 Read the curves
# Training loss should fall; validation loss should fall with it. When validation loss turns up while training
# loss keeps falling, the model is memorising: fewer epochs, or more data. Two kinds of validation point: every
# 10 steps the job scores one batch of the validation file (cheap, and noisy: a batch of 4 examples can be easy
# or hard), and at the end of every epoch it scores the whole file (`full_valid_loss`, kept with each checkpoint).
# Judge the fit on the whole-file points. *Token accuracy* is the share of the answer's tokens the model
# predicts right, one token at a time, given the correct ones before it.

# %%
curves = finetune.results_frame(course.client, job)
checkpoints = finetune.checkpoints_frame(course.client, job.id)
course.record(first_train_loss=float(curves["train_loss"].iloc[0]), last_train_loss=float(curves["train_loss"].iloc[-1]),
              n_checkpoints=len(checkpoints), full_valid_loss=checkpoints.sort_values("step")["full_valid_loss"].tolist())
finetune.plot_results(curves, checkpoints);

# %%
course.findings("curves", finetune.curve_findings(curves, checkpoints))

# %% [markdown]
# ### 3.5 Checkpoints
# One per epoch (the last three are kept). Each is a model you can call, useful when a later epoch overfits.

# %%
checkpoints

# %% [markdown]
# ### 3.6 Ask the new model

# %%
example = dataprep.read_jsonl(REPO_ROOT / "data/billing/test.jsonl", 1)[0]
reply = course.client.chat.completions.create(model=job.fine_tuned_model, messages=example["messages"][:-1], max_tokens=32)
print("request: ", example["messages"][1]["content"])
print("expected:", example["messages"][2]["content"])
print("answer:  ", reply.choices[0].message.content)
course.record(example_answer=reply.choices[0].message.content, example_expected=example["messages"][2]["content"])

# %%
course.findings("example answer", billing.answer_findings(example["messages"][2]["content"], reply.choices[0].message.content))

# %% [markdown]
# ## 4. Summary
# - A job is a few API calls: upload, create, follow; the result is a model name.
# - Watch training and validation loss together; keep the checkpoint before validation loss rises.
# - `trained_tokens` is what OpenAI bills: tokens per epoch x epochs.
#
# **Exercises.** (1) Set `N_EPOCHS = "auto"` (OpenAI's rule gives 3 for the whole set): does the third epoch still
# lower the validation loss, and is it worth a third more training? (2) Set
# `MAX_SPEND_USD = 0.01` with `BACKEND = "openai"`: what does the budget guard say?
