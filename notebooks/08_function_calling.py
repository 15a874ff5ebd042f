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
# # 08 · Function calling
# **Time:** about 7 minutes on a 2-core CPU without bf16 kernels (fp32), about 2.5 with them (`make reports` runs the same) · **Cost:** $0 locally; on OpenAI, one training run (3.1 prints its estimate) and 3 x `N_TEST` requests.

# %% tags=["parameters"]
BACKEND = "local"
MODEL = "gpt-4.1-mini"
N_TRAIN = 48  # training requests, about half for each tool
N_TEST = 24  # held-out requests (procedures phrased as training never phrased them)
N_EPOCHS = 2
SEED = 1
MAX_TOKENS = 64

# %%
import pandas as pd
from helpers.course import setup
from helpers.data import dataprep, validate
from helpers.course import finetune, tool_use
from helpers.paths import REPO_ROOT
course = setup("08_function_calling", BACKEND)
work = REPO_ROOT / ".workbook" / "data" / "function_calling"

# %% [markdown]
# ## 1. Why
# A billing assistant that only writes text leaves the work to whoever reads it. Given **tools** (functions your code
# runs), a model can answer with a *call*: which function, with which arguments. The model has to choose the right
# tool and fill its arguments from the request, as JSON your code can run. A small model does this badly out of the
# box; fine-tuning on examples of good calls is how OpenAI suggests making it reliable, and the local server trains
# the same way.

# %% [markdown]
# ## 2. What
# Two tools, described by JSON Schema: `lookup_cpt_code(procedure)` and `submit_claim(cpt_code, patient_age,
# patient_sex)`. A training example carries the `tools` and an assistant message with `tool_calls` instead of
# text; notebook 02's validator checks both. At answer time the calls come back in `message.tool_calls`, each with
# a function name and its arguments as a JSON string, exactly as OpenAI returns them. Three measures on held-out
# requests: the **right tool**, **valid JSON** arguments, the **right arguments** (the procedure as the request names
# it; a claim's code, age and sex exactly).

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 The data

# %%
train_path = dataprep.write_jsonl(tool_use.examples("train", N_TRAIN, SEED), work / "train.jsonl")
test = tool_use.examples("test", N_TEST, SEED)
report = validate.validate_file(train_path, model=MODEL, n_epochs=N_EPOCHS)
course.record(n_train=report.n_examples, n_test=len(test), ready=report.ok, estimated_cost_usd=report.cost["cost_usd"])
print(report.summary())
print(train_path.read_text(encoding="utf-8").splitlines()[0][-420:])  # the end of one example: its tool call

# %% [markdown]
# ### 3.2 Fine-tune

# %%
job = finetune.start_job(course.client, training_file=finetune.upload(course.client, train_path).id, model=MODEL, seed=SEED,
                         suffix="tools", metadata={"course": "function_calling"}, hyperparameters={"n_epochs": N_EPOCHS})
job = finetune.follow(course.client, job.id, show_events=False)
course.record(status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens)
print(job.status, job.fine_tuned_model)

# %% [markdown]
# ### 3.3 Base and tuned, on held-out requests
# The same call as on OpenAI: `client.chat.completions.create(model=..., messages=..., tools=TOOLS,
# parallel_tool_calls=False)` (each request needs one call). A third column
# asks the base model with `tool_choice="required"`: the server then constrains its answer to a call whose arguments
# are valid against the tool's schema (structured output), which is what you can get without training.

# %%
base_calls = tool_use.evaluate(course.client, MODEL, test, max_tokens=MAX_TOKENS)
forced_calls = tool_use.evaluate(course.client, MODEL, test, tool_choice="required", max_tokens=MAX_TOKENS)
tuned_calls = tool_use.evaluate(course.client, job.fine_tuned_model, test, max_tokens=MAX_TOKENS)
table = pd.DataFrame({"base": tool_use.summarize(base_calls), "base, a call required": tool_use.summarize(forced_calls),
                      "fine-tuned": tool_use.summarize(tuned_calls)})
course.record(base=table["base"].to_dict(), forced=table["base, a call required"].to_dict(), tuned=table["fine-tuned"].to_dict())
table.round(3)

# %%
course.findings("calls", tool_use.tool_findings(table["base"].to_dict(), table["base, a call required"].to_dict(),
                                                table["fine-tuned"].to_dict()))
pd.DataFrame({"request": base_calls["request"], "base": base_calls["answer"], "fine-tuned": tuned_calls["answer"]}).head(6)

# %% [markdown]
# ### 3.4 One call, as your code receives it

# %%
reply = course.client.chat.completions.create(model=job.fine_tuned_model, messages=test[0]["messages"][:-1], tools=tool_use.TOOLS,
                                              parallel_tool_calls=False, max_tokens=MAX_TOKENS, temperature=0)
print("finish_reason:", reply.choices[0].finish_reason)
print(reply.choices[0].message.model_dump_json(indent=2, exclude_none=True))

# %% [markdown]
# ## 4. Summary
# - Tools are described by JSON Schema; calls come back as `message.tool_calls` with arguments as a JSON string.
# - Score calls on three levels: the tool, parseable arguments, the right values. Parseable is not right: validate
#   the values (a code of five digits, an age in range) before your code acts on them.
# - Fine-tuning teaches when to call which tool and how to fill the arguments from the request. It does not teach
#   facts the tools hold: the code book stays behind `lookup_cpt_code`.
#
# **Exercises.** (1) Halve `N_TRAIN`: how many examples does the tuned model need? (2) Add a third tool to
# `helpers/course/tool_use.py` (for example `check_eligibility`) and examples for it. (3) Ask the tuned model a request that
# needs no tool: what does it do, and what examples would teach it to answer in text?
