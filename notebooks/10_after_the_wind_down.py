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
# # 10 · After the wind-down, and patient data
# **Time:** about 1.5 minutes on a 2-core CPU without bf16 kernels (fp32), about 1 with them (no training) · **Cost:** $0 locally; on OpenAI, one stored chat request (deleted in 3.6).

# %% tags=["parameters"]
BACKEND = "local"
MODEL = "gpt-4.1-mini"
TUNED_MODEL = ""  # empty: the newest model notebook 03 trained
EXPORT_DIR = ".workbook/take_home"  # where the tuned model is exported (relative to the repository)
N_AT_HOME = 8  # held-out requests asked both at home and of the server (3.4)
BROUGHT_NAME = "team-model"  # the name a second server gives the base model you took home in 3.4 (3.5)

# %%
import pandas as pd
from helpers.course import setup, billing, finetune, wind_down
from helpers.pricing import costs
from helpers.data import dataprep, privacy
from helpers.paths import REPO_ROOT, shown
course = setup("10_after_the_wind_down", BACKEND)

# %% [markdown]
# ## 1. Why
# OpenAI is closing self-serve fine-tuning. What you learned here still applies: the data, the validator, the
# measurements and the decisions do not depend on who runs the training. This notebook shows what a refused account
# sees, what keeps working, how to take a model trained here to any server, and how to keep patient data out of
# training files in the first place.

# %% [markdown]
# ## 2. What
# - **The notice**, from the dated price table (`data/prices.json`), and the fine-tuned models' inference prices:
#   models already trained keep serving.
# - **A refused job**: HTTP 403 with the code `training_not_available`. A second local server, started to refuse
#   training, shows exactly what the `openai` client raises and what the course's helper says instead of a traceback.
# - **What keeps working**: this course's local backend; the same cells pointed at any server that speaks this API
#   (`OpenAI(base_url=...)`); open-weight fine-tuning with transformers and peft, which is what the local server runs.
# - **Taking a model home**: a local fine-tuned model is a LoRA adapter in peft's format beside the base model's
#   weights; transformers + peft and vLLM load that pair (notebook 11 takes it to llama.cpp and Ollama).
# - **Your own model**: the local server trains and serves any open model you bring (a Hugging Face folder, a
#   `.gguf` file), under a name of yours; the notebooks run on it with one `MODEL` line.
# - **Patient data**: what not to upload, named checks for identifiers, scrubbing them, and deleting stored
#   completions.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 The notice

# %%
text, as_of = wind_down.notice()
print(f"As of {as_of}: {text}")
costs.prices_frame().query("kind == 'fine-tuned'")[["model", "input_per_1m", "output_per_1m", "training_per_1m", "training_per_hour"]]

# %% [markdown]
# ### 3.2 What a refused account sees
# The same upload-and-create cells as notebook 03, against a server that refuses training as OpenAI does after the
# wind-down. Everything else (files, chat completions) still answers.

# %%
refusing = wind_down.rehearsal_client()
raised, said = wind_down.try_to_train(refusing, REPO_ROOT / "data/billing/validation.jsonl", MODEL)
still = refusing.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say OK."}], max_tokens=5)
wind_down.stop_rehearsal()
course.record(raised=raised, refusal=said, chat_after_refusal=bool(still.choices[0].message.content))
print("client.fine_tuning.jobs.create raises:\n ", raised)
print("finetune.start_job, the course's helper, says:\n ", said)

# %% [markdown]
# ### 3.3 The same cells, another server
# Every notebook gets its client from `helpers.course.setup`; any server that speaks OpenAI's API is one `base_url`
# away: `OpenAI(base_url="http://host:port/v1", api_key=...)`. What it offers differs: a colleague's vLLM or a
# provider's chat endpoint answers (notebook 04's evaluation runs against it unchanged), but only a server with
# OpenAI's fine-tuning routes (this course's, or OpenAI's before the wind-down) trains (notebooks 03 and 05-09).
# This notebook's client talks to:

# %%
print(course.client.base_url if BACKEND == "local" else "api.openai.com")

# %% [markdown]
# ### 3.4 Take the fine-tuned model home
# Export 03's model out of the local server, load it with transformers + peft in this kernel (no server), and ask it
# the same held-out requests as the server. The export names the precision the server answers in (`take_home.json`:
# bf16 on a CPU or GPU with bf16 kernels, else fp32) and `wind_down.load` loads the base in it: the same weights, the
# same template and greedy decoding then give the same answers. Loaded in another precision (fp32 at home against a
# server in bf16), answers can part wherever two next tokens are nearly tied.

# %%
tuned = finetune.course_model(course.client, TUNED_MODEL)
folder = wind_down.export_model(tuned, REPO_ROOT / EXPORT_DIR / tuned.split(":")[-1])
files = pd.DataFrame([{"file": p.name, "KB": round(p.stat().st_size / 1024, 1)} for p in sorted(folder.iterdir())])
print("exported to", shown(folder))
files

# %%
requests = [row["messages"][:-1] for row in dataprep.read_jsonl(REPO_ROOT / "data/billing/test.jsonl", N_AT_HOME)]
request = requests[0]  # 3.5 asks it again
model, tokenizer = wind_down.load(folder)
print(f"loaded in {model.dtype} (the server's precision, from take_home.json)")
compared_at_home = wind_down.at_home_and_served(model, tokenizer, course.client, tuned, requests)
course.record(exported_files=files["file"].tolist(), same_answers=int(compared_at_home["same"].sum()), asked_at_home=len(requests),
              at_home_parse=int(compared_at_home["transformers + peft"].map(lambda a: billing.parse_answer(a) is not None).sum()))
print(f"the same answer at home and on the server: {compared_at_home['same'].sum()} of {len(requests)}")
compared_at_home

# %% [markdown]
# ### 3.5 Your own model
# After the wind-down, the server that trains is yours, and it need not train SmolLM2-135M. Bring the open model you
# would deploy (a Qwen, Llama, Gemma or SmolLM2 instruct checkpoint) with one command, on the machine that has the
# memory for it, a GPU where there is one:
#
# ```
# workbook serve --model team-model=/models/Qwen2.5-1.5B-Instruct    # a Hugging Face folder, a .gguf file, or a hub id
# ```
#
# For the server the notebooks start, put the same `team-model=...` line in a file and point the `WORKBOOK_MODELS`
# setting at it. Then set `MODEL = "team-model"` in any notebook's parameters cell (`BASE_MODEL` in 04): the cells
# do not change. The server reads the model's own chat template for its loss masks, its end-of-turn tokens and its
# tool-call format; `workbook check-device --model team-model=...` proves a machine end to end first (the README's
# "Your own model").
#
# What changes is speed, memory and quality: more parameters take more memory and more time per token, and notebook
# 04 measures what they buy on your data. OpenAI has no price for an open model, so the course shows none (its cost is
# your machine's time). Below, a second server brings the base model's folder you took home in 3.4 under the name
# `BROUGHT_NAME`, and the same call asks both servers the held-out request of 3.4.

# %%
brought = wind_down.bring(BROUGHT_NAME, wind_down.base_folder(folder))
print(brought.command)
compared = wind_down.same_request({MODEL: course.client, BROUGHT_NAME: brought.client}, request)
wind_down.stop_rehearsal(brought.port)
course.record(brought=compared.to_dict(orient="index"))
compared

# %%
course.findings("your own model", wind_down.brought_findings(compared, MODEL, BROUGHT_NAME))

# %% [markdown]
# ### 3.6 Patient data
# Training data for billing can hold protected health information (PHI): names, dates (other than the year),
# record and account numbers, contact details, ages over 89. Do not upload it to a service you have no agreement
# with; de-identify before training, wherever the training runs. The checks below find identifiers that have a
# shape; the course's data and four invented notes that carry some:

# %%
course_rows = dataprep.read_jsonl(REPO_ROOT / "data/billing/train.jsonl")
notes = dataprep.read_jsonl(REPO_ROOT / "data/billing/notes_with_identifiers.jsonl")
found_course, found_notes = privacy.scan(course_rows), privacy.scan(notes)
scrubbed = privacy.scrub_rows(notes)
left = privacy.scan(scrubbed)
course.record(identifiers_in_course=len(found_course), identifiers_in_notes=len(found_notes), identifiers_after_scrub=len(left))
course.findings("privacy", privacy.privacy_findings(found_course, len(course_rows), found_notes, len(notes), left))
pd.DataFrame({"note": [n["messages"][1]["content"] for n in notes], "scrubbed": [n["messages"][1]["content"] for n in scrubbed]})

# %% [markdown]
# Answers are kept too when you ask for it: `store=True` stores a chat completion (request and answer) on the
# server, for evaluations and distillation (notebook 05 uses it). Find yours by metadata and delete them when they
# are no longer needed:

# %%
tag = {"lesson": "privacy"}
course.client.chat.completions.create(model=MODEL, messages=scrubbed[0]["messages"][:-1], max_tokens=16, store=True, metadata=tag)
stored = course.client.chat.completions.list(metadata=tag).data
for completion in stored:
    course.client.chat.completions.delete(completion.id)
left_stored = course.client.chat.completions.list(metadata=tag).data
course.record(stored_before_delete=len(stored), stored_after_delete=len(left_stored))
print(f"stored: {len(stored)}; after deleting: {len(left_stored)}")

# %% [markdown]
# ## 4. Summary
# - After the wind-down, already trained OpenAI models keep serving; new jobs are refused with 403
#   `training_not_available`. The course's helper says so in words, and the local backend trains the same way.
# - A model trained here is yours: an adapter in peft's format beside open weights, loadable with transformers and
#   peft (in the server's precision it gives the server's answers: 3.4 counts them), servable with vLLM; notebook 11
#   exports it as GGUF for llama.cpp and Ollama.
# - The server trains the open model you bring: `workbook serve --model NAME=SOURCE` (or `WORKBOOK_MODELS`) and one
#   `MODEL` line; the client code stays the same.
# - Keep patient identifiers out of training files: check, scrub, read what is left; delete stored completions and
#   uploaded files you no longer need (`client.files.delete`).
#
# **Exercises.** (1) Add a check to `helpers/data/privacy.py` for US ZIP codes and rescan the notes. (2) Serve the
# exported adapter with vLLM on a machine that has it, and point notebook 04 at it with `base_url`.
