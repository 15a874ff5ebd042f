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
# # 12 · Rewards instead of examples: reinforcement fine-tuning
# **Time:** about 6 minutes on a 2-core CPU without bf16 kernels (fp32), about 2.5 with them (measured with them; without them estimated from 03's ratio) · **Cost:** $0 locally; on OpenAI, reinforcement fine-tuning is billed per hour of training (the dated price table's o4-mini row) and the supervised run by its tokens.

# %% tags=["parameters"]
BACKEND = "local"
MODEL = "gpt-4.1-mini"
START_MODEL = ""  # empty: the newest model notebook 03 trained (it knows the form and most codes)
N_PROMPTS = 32  # requests to learn from, with their right codes (the validation file's first ones)
N_VALID = 8  # requests whose mean reward the job reports as it trains
N_TEST = 48  # held-out requests, the test file's first ones (0 means all 111)
CODE_WEIGHT = 0.8  # the reward: this much for the right code, the rest for the form
SAMPLES = 4  # answers sampled per request in 3.2 (a reinforcement job samples 4 per request at compute_multiplier 1)
N_EPOCHS = 1
BATCH_SIZE = 4
SEED = 1
MAX_TOKENS = 32

# %%
import pandas as pd
from helpers.course import setup, evaluation, finetune, rewards
from helpers.data.dataprep import read_jsonl, write_jsonl
from helpers.paths import REPO_ROOT
course = setup("12_reinforcement", BACKEND)
work = REPO_ROOT / ".workbook" / "data" / "reinforcement"

# %% [markdown]
# ## 1. Why
# Supervised fine-tuning needs the right answer written out for every example. Often you cannot write it, but you
# can *check* it: a program can tell whether a code is the one the billing system expects, whether an answer parses,
# whether a test passes. **Reinforcement fine-tuning (RFT)** trains on that check. The model answers each request
# several times, a **grader** scores every answer, and training makes the better-scored answers more likely. OpenAI
# offers it as its third method (`method={"type": "reinforcement", ...}`), and open courses teach it as GRPO or "RL
# with verifiable rewards".

# %% [markdown]
# ## 2. What
# - **The grader.** OpenAI's grader types, run by the server: a `string_check` (does the answer hold "CPT Code: " and
#   the row's code?), a `python` grader (is the answer in the form the billing system reads?), and a `multi` grader
#   that combines them, `CODE_WEIGHT` for the code and the rest for the form.
# - **The prompts.** The conversation up to the user's turn, plus the fields the grader reads (here `code`). No
#   answer is written out, so the same file could hold requests whose answers nobody has typed.
# - **Group-relative policy optimisation (GRPO).** For each request the job samples a group of answers. An answer's
#   advantage is its reward minus its group's mean, over the group's spread. The update raises the better answers'
#   log-probabilities and lowers the worse ones'. A KL term keeps the model near where it started.
# - **What it needs.** A grader you trust, and requests the model *sometimes* gets right. When all of a group's
#   answers score the same, the group teaches nothing. 3.2 counts such groups before any training.
# - **The comparison.** Supervised fine-tuning from the same model, on the same requests with their answers written
#   out, and held-out accuracy before and after each, with 95% intervals.
# - **On OpenAI.** Reinforcement fine-tuning takes only OpenAI's reasoning models (o4-mini, the dated price table's row,
#   billed per hour of training), which supervised fine-tuning does not take: 3.3 and 3.4 from one starting model are
#   the local backend's. Your grader and prompt files go to OpenAI unchanged.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 The grader, tried on three answers

# %%
start = finetune.course_model(course.client, START_MODEL)
grader = rewards.billing_grader(CODE_WEIGHT)
course.client.fine_tuning.alpha.graders.validate(grader=grader)
tried = {"right": "Emergency department visit, high complexity - CPT Code: 99285",
         "wrong code": "Emergency department visit, high complexity - CPT Code: 99284",
         "not in the form": "That would be 99285."}
pd.DataFrame({name: {"reward": course.client.fine_tuning.alpha.graders.run(grader=grader, model_sample=text, item={"code": "99285"}).reward}
              for name, text in tried.items()}).T

# %% [markdown]
# ### 3.2 Which requests can the model learn from?

# %%
rows = read_jsonl(REPO_ROOT / "data/billing/validation.jsonl")
train_rows, valid_rows = rows[:N_PROMPTS], rows[N_PROMPTS:N_PROMPTS + N_VALID]
test = read_jsonl(REPO_ROOT / "data/billing/test.jsonl", N_TEST)
samples = rewards.sample_rewards(course.client, start, train_rows, grader, SAMPLES, MAX_TOKENS)
groups = rewards.learnable(samples)
course.record(start_model=start, groups=groups, n_prompts=len(train_rows), n_test=len(test))
course.findings("groups", rewards.group_findings(groups))
groups

# %% [markdown]
# ### 3.3 Train with the grader

# %%
prompts, valid = rewards.write_prompts(train_rows, work / "prompts.jsonl"), rewards.write_prompts(valid_rows, work / "valid.jsonl")
rft = finetune.start_job(course.client, training_file=finetune.upload(course.client, prompts).id,
                         validation_file=finetune.upload(course.client, valid).id, model=start, seed=SEED, suffix="rewarded",
                         metadata={"course": "reinforcement", "variant": "rft"},
                         method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
                             "n_epochs": N_EPOCHS, "batch_size": BATCH_SIZE, "eval_interval": 2}}})
rft = finetune.follow(course.client, rft.id, show_events=False)
curves = rewards.reward_curves(course.client, rft.id)
course.record(rft_status=rft.status, rft_model=rft.fine_tuned_model, curves=curves.reset_index().to_dict(orient="list"))
course.findings("curves", rewards.curve_findings(curves))
curves[["train_reward_mean", "valid_reward_mean"]].plot(style="o-", figsize=(7, 3), ylim=(0, 1.05),
                                                        title="Mean reward per step: training requests and validation requests");

# %% [markdown]
# ### 3.4 The same requests, answers written out: supervised fine-tuning

# %%
sft = finetune.start_job(course.client, training_file=finetune.upload(course.client, write_jsonl(train_rows, work / "examples.jsonl")).id,
                         model=start, seed=SEED, suffix="examples", metadata={"course": "reinforcement", "variant": "sft"},
                         hyperparameters={"n_epochs": N_EPOCHS, "batch_size": BATCH_SIZE})
sft = finetune.follow(course.client, sft.id, show_events=False)
course.record(sft_status=sft.status, sft_model=sft.fine_tuned_model)

# %% [markdown]
# ### 3.5 Held-out requests: before, after RFT, after SFT

# %%
models = {"start": start, "RFT": rft.fine_tuned_model, "SFT": sft.fine_tuned_model}
results = {name: evaluation.evaluate(course.client, model, test, max_tokens=MAX_TOKENS) for name, model in models.items()}
seconds = {"start": 0, "RFT": rewards.job_seconds(rft), "SFT": rewards.job_seconds(sft)}
table = {name: {"right": int(frame["code_ok"].sum()), "n": len(frame), "seconds": seconds[name]} for name, frame in results.items()}
multipliers = {"RFT": rft.hyperparameters.learning_rate_multiplier, "SFT": sft.hyperparameters.learning_rate_multiplier}
course.record(held_out=table, multipliers=multipliers)
course.findings("held out", rewards.compare_findings(table, "start", ["RFT", "SFT"]) + rewards.step_findings(multipliers))
pd.DataFrame({name: evaluation.summarize(frame, priced_as=MODEL, fine_tuned=True) for name, frame in results.items()}).T[
    ["code_accuracy", "code_accuracy_ci_low", "code_accuracy_ci_high", "format_compliance"]].round(3)

# %% [markdown]
# ## 4. Summary
# - RFT trains on a check, not on written answers: a grader scores the model's own answers, and the better ones
#   become more likely. It needs a grader you trust (3.1) and requests the model sometimes gets right (3.2).
# - The findings above say, from this run's numbers, whether rewards did better than examples here.
#
# **Exercises.** (1) Set `CODE_WEIGHT = 0` and train again: what does a reward for the form alone teach? (2) Start
# from the base (`START_MODEL = "gpt-4.1-mini"`): how many groups teach anything? (3) Raise `N_PROMPTS` to 66. (4) Give
# SFT the step RFT took (`"learning_rate_multiplier": 0.25` in 3.4's hyperparameters): how does its held-out accuracy compare now?
