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
# # 00 · Start here
# **Time:** under a minute on a 2-core CPU · **Cost:** $0 on the local backend; one short chat request on OpenAI.

# %% tags=["parameters"]
BACKEND = "local"  # "local" (default, $0, offline) or "openai" (needs OPENAI_API_KEY in the environment)

# %%
from helpers.course import setup, environment_report, billing
course = setup("00_start_here", BACKEND)

# %% [markdown]
# ## 1. Why
# Fine-tuning is the third rung of a ladder: a better prompt, then retrieval (RAG), then fine-tuning, then
# distillation into a smaller model. Each rung costs more to set up and fixes a different problem. This course
# shows when each one pays off, and does every step for real: prepare data, train, evaluate, distill.
#
# OpenAI is closing self-serve fine-tuning to new jobs, and a workshop room has no budget, so the default
# backend is a server on this machine that answers OpenAI's API and really trains a small open model. The same
# cells run against OpenAI when you choose it.

# %% [markdown]
# ## 2. What
# | notebook | you will |
# |---|---|
# | `01_when_to_fine_tune` | climb the ladder, price each rung from the dated price table, find the break-even volume |
# | `02_data_prep` | validate a fine-tuning file, fix the usual mistakes, count tokens and cost |
# | `03_training` | upload, start a job, follow it, read its loss curves and checkpoints |
# | `04_inference_and_eval` | compare the base and the fine-tuned model on held-out data; see what needs RAG |
# | `05_distillation` | let a teacher label data, train a cheaper student, compare accuracy and cost |
# | `06_hyperparameters` | train with the default epochs, many more, and two larger learning rates; read the curves |
# | `07_garbage_in` | train on wrong labels that pass every format check; measure the damage; audit labels |
# | `08_function_calling` | teach the model to call billing tools with the right arguments |
# | `09_preferences_dpo` | teach the model which of two answers you prefer (DPO), after SFT |
# | `10_after_the_wind_down` | what changes when OpenAI stops training, take your model home, keep patient data out |
#
# Every notebook opens with a `parameters` cell. Fast defaults run in minutes (each notebook's time line says how
# many); `make reports` runs the course-sized values and writes HTML reports to `reports/`.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 Your environment

# %%
environment_report(course)

# %% [markdown]
# ### 3.2 The models the backend offers
# On the local backend, OpenAI's model names are aliases for one small open model, so code written for OpenAI
# runs unchanged. On OpenAI you see your organisation's models.

# %%
models = [m.id for m in course.client.models.list().data]
course.record(n_models=len(models))
models[:12]

# %% [markdown]
# ### 3.3 A first request

# %%
reply = course.client.chat.completions.create(
    model="gpt-4.1-mini", max_tokens=40,
    messages=[{"role": "user", "content": "In one sentence: what is a CPT code?"}])
course.record(first_reply=reply.choices[0].message.content, first_reply_tokens=reply.usage.total_tokens)
print(reply.choices[0].message.content)
print(reply.usage)

# %% [markdown]
# Is it right? CPT means *Current Procedural Terminology*, the American Medical Association's codes for medical
# procedures and services. The check below reads the answer:

# %%
course.findings("first answer", billing.cpt_definition_findings(reply.choices[0].message.content))

# %% [markdown]
# ### 3.4 Running the course as a workshop or as reports
# - **Workshop:** the facilitator makes one key per participant (`workbook keys 25 > keys.txt`) and runs
#   `workbook serve --host 0.0.0.0 --api-keys keys.txt` (a server open to the room without keys is refused);
#   each participant sets `WORKBOOK_SERVER_URL` and `WORKBOOK_API_KEY` to the server and their key. Each key is its
#   own workspace: nobody sees anyone else's files, jobs or models (the guide: `docs/workshop.md`).
# - **Reports:** `make reports` executes every notebook with course-sized parameters and writes HTML to
#   `reports/`; `workbook report 02_data_prep -p DATASET_PATH my.jsonl` does one notebook on your own data.

# %% [markdown]
# ## 4. Summary
# - The backend is chosen once, in `setup`; every later cell speaks the plain `openai` client.
# - Locally, `gpt-4.1-mini` and friends are stand-ins served by a small open model, so expect lower quality
#   and $0 cost; the workflow and the numbers it computes are the real thing.
#
# **Exercise.** Ask the model another question; then run this notebook with `BACKEND = "openai"` (with a key
# in your environment) and compare the answers.
