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
# # 05 · Distillation
# **Time:** about 11 minutes on a 2-core CPU without bf16 kernels (fp32), about 3.5 with them; at course size (the whole pool) about 8 with them · **Cost:** $0 locally; on OpenAI, `N_POOL` teacher requests plus a student training run (the budget guard checks it).

# %% tags=["parameters"]
BACKEND = "local"
TEACHER_MODEL = ""  # empty: locally, the model notebook 03 trained, given retrieved codes (on OpenAI use "gpt-4.1")
TEACHER_PRICED_AS = "gpt-4.1"
STUDENT_BASE = "gpt-4.1-nano"
N_POOL = 222  # unlabeled requests for the teacher (0 means all 444; fewer than about 6 a code teach the student little)
RETRIEVED_CODES = 5
N_TEST = 16  # 0 means all
N_EPOCHS = 3
BATCH_SIZE = 4
SEED = 1
MAX_SPEND_USD = 1.0
MAX_TOKENS = 32
CONCURRENCY = 16

# %%
import uuid
import pandas as pd
from helpers.course import setup, billing, distill, evaluation, finetune, retrieval
from helpers.data import dataprep, validate
from helpers.paths import REPO_ROOT
course = setup("05_distillation", BACKEND)
teacher = finetune.course_model(course.client, TEACHER_MODEL)
run_id = f"distill-{uuid.uuid4().hex[:8]}"
print("teacher:", teacher, "| student base:", STUDENT_BASE, "| run:", run_id)

# %% [markdown]
# ## 1. Why
# A big model with a long prompt answers well but costs a lot per query. If it can label your traffic, a small
# model trained on its answers may learn to do much of the same job with a short prompt, for a fraction of the
# price. Section 3.4 measures how much.
#
# > **On the local stand-in (SmolLM2-135M).** There is one 135M model. The teacher is the model notebook 03
# > fine-tuned, given retrieved codes in every prompt and priced as `TEACHER_PRICED_AS`; the student is the same
# > base model trained on the teacher's answers with only the one-line instruction, priced as `STUDENT_BASE`. What
# > moves from teacher to student here is the context (the retrieved codes), not a bigger model's knowledge. This
# > teacher also has a known weakness: 03 trained it to copy from its candidates, and it sometimes copies when
# > retrieval ranks a wrong code first, so on codes it trained on it can do worse with candidates than 04's tuned
# > model does without them: compare the teacher in 3.4 with 04's fine-tuned model. **On OpenAI or a bigger model:**
# > the teacher is a larger model (`TEACHER_MODEL = "gpt-4.1"`) with the long prompt or retrieved codes, and what
# > moves to the student is that model's knowledge as well as the context.

# %% [markdown]
# ## 2. What
# 1. The **teacher** answers unlabeled requests; each answer is stored (`store=True`) with `metadata`.
# 2. We read the answers back with `chat.completions.list(metadata=...)` and keep only good ones.
# 3. The **student** is fine-tuned on those answers, with a short prompt.
# 4. We compare teacher, student base and student on the held-out test set: accuracy, latency, input tokens, $.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 The teacher labels the pool

# %%
pool = dataprep.read_jsonl(REPO_ROOT / "data/billing/pool.jsonl", N_POOL)
distill.label_pool(course.client, teacher, pool, run_id, k=RETRIEVED_CODES, max_tokens=MAX_TOKENS, concurrency=CONCURRENCY)
answers = distill.collect(course.client, teacher, run_id)
course.record(n_pool=len(pool), n_collected=len(answers))
answers.head()

# %% [markdown]
# ### 3.2 Keep the good answers
# Three checks: the answer is in the format, its code exists, and its description is the code table's
# description of that code. The last check does not ask retrieval again (the teacher saw the retrieved codes
# in its prompt, so agreeing with them would mostly confirm that it copied from its list); it catches an answer
# that joins one code's number to another code's description, the mistake a model makes when it mixes two
# candidates. It cannot catch a wrong answer that is consistent with itself. Kept answers are rewritten in the
# code table's exact words.

# %%
checked_answers = distill.filter_answers(answers)
kept = checked_answers[checked_answers["keep"]]
course.record(n_kept=len(kept))
distill.require_enough(kept)
checked_answers[["format_ok", "known_code", "description_matches_code", "keep"]].sum()

# %% [markdown]
# Did the filter keep right labels and drop wrong ones? The pool ships with an answer key
# (`data/billing/pool_answers.jsonl`) that no model sees; here it measures the teacher's labels, before and
# after the filter. With your own data you have no key: label a few dozen requests by hand to measure the same.

# %%
labels = distill.label_accuracy(checked_answers, billing.pool_answers())
course.record(teacher_labels=labels.to_dict(orient="index"))
course.findings("filter", distill.filter_findings(labels.to_dict(orient="index")))
labels.round(3)

# %% [markdown]
# ### 3.3 Train the student on the teacher's answers

# %%
student_path = REPO_ROOT / ".workbook" / "data" / f"{run_id}.jsonl"
distill.student_file(kept, pool, student_path, billing.SYSTEM_PROMPT)
report = validate.validate_file(student_path, model=STUDENT_BASE, n_epochs=N_EPOCHS)
print(report.summary())
print(finetune.budget_guard(course.backend, report.cost["cost_usd"], MAX_SPEND_USD))
job = finetune.start_job(course.client, training_file=finetune.upload(course.client, student_path).id, model=STUDENT_BASE,
                         suffix="student", seed=SEED, metadata={"course": "billing-student", "run": run_id},
                         hyperparameters={"n_epochs": N_EPOCHS, "batch_size": BATCH_SIZE})
job = finetune.follow(course.client, job.id, show_events=False)
course.record(student_status=job.status, student_model=job.fine_tuned_model)
job.status, job.fine_tuned_model

# %% [markdown]
# ### 3.4 Teacher, student base and student on the test set
# The teacher gets retrieved candidate codes in every prompt; the student needs only the one-line instruction.

# %%
test = dataprep.read_jsonl(REPO_ROOT / "data/billing/test.jsonl", N_TEST)
with_rag = lambda messages: retrieval.with_retrieval(messages, RETRIEVED_CODES)
runs = {"teacher": (teacher, with_rag, TEACHER_PRICED_AS, False), "student base": (STUDENT_BASE, None, STUDENT_BASE, False),
        "student": (job.fine_tuned_model, None, STUDENT_BASE, True)}
comparison = pd.DataFrame({name: evaluation.summarize(evaluation.evaluate(course.client, model, test, prompt=prompt,
                                                                          max_tokens=MAX_TOKENS, concurrency=CONCURRENCY),
                                                      priced_as=priced, fine_tuned=tuned)
                           for name, (model, prompt, priced, tuned) in runs.items()})
course.record(comparison=comparison.to_dict())
comparison.round(4)

# %% [markdown]
# ## 4. Summary
# What the comparison shows, written from its numbers:

# %%
course.findings("comparison", distill.comparison_findings(comparison.to_dict()))
course.findings("cookbook", distill.cookbook_findings(comparison.to_dict()))

# %% [markdown]
# - Distillation turns a strong, expensive setup into training data for a cheap one; the stored-completions
#   API (`store=True`, `metadata`, `chat.completions.list`) collects it without a dashboard.
# - Filter what the teacher says before training on it: a student copies mistakes as faithfully as answers.
#   A filter must check something the teacher did not already see; section 3.2 measured what this one removed.
# - Locally the teacher is the fine-tuned model with retrieved codes in its prompt, and it is priced as
#   `TEACHER_PRICED_AS`; on OpenAI the defaults would be teacher `gpt-4.1`, student `gpt-4.1-nano`.
#
# **Exercises.** (1) Raise `N_POOL`: how do the student's accuracy and the share of kept answers change?
# (2) Skip the filter (train on every answer, `kept = checked_answers`): what happens to the student's accuracy,
# given what section 3.2 measured about the dropped answers?
