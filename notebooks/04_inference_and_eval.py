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
# # 04 · Inference and evaluation
# **Time:** about 2.5 minutes on a 2-core CPU without bf16 kernels (fp32), about 1 with them; on the whole test set about 7 and 3 · **Cost:** $0 locally; on OpenAI, `N_TEST` x 2 + `N_PROMPTING` x 2 + `N_LONG_PROMPT` x 2 + `N_NEW_CODES` x 4 requests (the tables price them).

# %% tags=["parameters"]
BACKEND = "local"
BASE_MODEL = "gpt-4.1-mini"
TUNED_MODEL = ""  # empty: the newest model notebook 03 trained
N_TEST = 16  # 0 means all held-out test requests
N_NEW_CODES = 6  # 0 means all requests for codes absent from training
N_PROMPTING = 12  # test requests for the prompting rung with retrieved codes (0 means N_TEST)
N_LONG_PROMPT = 4  # the first of those for its long-prompt runs (0 means N_PROMPTING): 1,600 tokens a request, the slowest here
RETRIEVED_CODES = 5
MAX_TOKENS = 32
CONCURRENCY = 16

# %%
import pandas as pd
from helpers.course import setup, billing, evaluation, finetune, retrieval, scenarios
from helpers.data import dataprep
from helpers.paths import REPO_ROOT
course = setup("04_inference_and_eval", BACKEND)
tuned = finetune.course_model(course.client, TUNED_MODEL)
print("fine-tuned model:", tuned)

# %% [markdown]
# ## 1. Why
# A falling loss curve is not a result. What matters is how the model answers requests it has never seen, how
# often the answer is usable at all, how fast, and at what price.

# %% [markdown]
# ## 2. What
# Four measures on the held-out test set (phrasings never seen in training): **exact match** (the whole answer
# right), **format compliance** (parseable as `Description - CPT Code: NNNNN`), **code accuracy** (the right
# code), and **latency** (p50 and p95: half of the requests took less than the p50, 95 in 100 less than the p95).
# Then the course's key lesson, measured: fine-tuning teaches format and style; facts the model never saw have to
# come from retrieval.
#
# **How sure is a share?** Accuracy on a few dozen requests is an estimate. Each one comes with a *95% confidence
# interval* (the rows `..._ci_low` and `..._ci_high`; Wilson's method): intervals made this way hold the true
# accuracy on 95 of 100 samples of this size. The fewer the requests, the wider it is; two models whose intervals
# overlap a lot have not been shown to differ.
#
# **Will a second run give the same numbers?** Decoding here is greedy (always the likeliest token), and a job's seed
# fixes its start and the order of its batches. In fp32 on one machine that is enough: the same job twice gave
# identical losses and answers, batched or one at a time (`benchmarks/repeatability.py`). With bf16 kernels (the
# server's default where the CPU or GPU has them), every product is rounded, and how it is rounded depends on the
# batch's shape (which requests arrived together, how long the longest is, how many threads split the work): where
# two tokens are nearly tied the pick can flip, and a score can move by a request or two between runs. That is
# sampling of another kind, and the interval is the scale to read it on.

# %% [markdown]
# ## 3. Hands-on
# ### 3.1 Base vs fine-tuned on held-out requests
# Priced at OpenAI's prices for the model each one stands in for.

# %%
test = dataprep.read_jsonl(REPO_ROOT / "data/billing/test.jsonl", N_TEST)
base_results = evaluation.evaluate(course.client, BASE_MODEL, test, max_tokens=MAX_TOKENS, concurrency=CONCURRENCY)
tuned_results = evaluation.evaluate(course.client, tuned, test, max_tokens=MAX_TOKENS, concurrency=CONCURRENCY)
summary = pd.DataFrame({"base": evaluation.summarize(base_results, priced_as=BASE_MODEL, fine_tuned=False),
                        "fine-tuned": evaluation.summarize(tuned_results, priced_as=BASE_MODEL, fine_tuned=True)})
course.record(base=summary["base"].to_dict(), tuned=summary["fine-tuned"].to_dict(), n_test=len(test))
summary.round(4)

# %% [markdown]
# ### 3.2 The prompting rung, measured
# 01 prices prompting (the whole code table and 20 worked examples in every prompt) and RAG (five retrieved
# codes) as the rungs before fine-tuning. Here they are measured with the base model on the first
# `N_PROMPTING` of the same requests (the long prompt on the first `N_LONG_PROMPT` of them: it is slow on a CPU),
# twice each: left free, and with the form
# imposed by the server (*constrained decoding*: the request's `response_format` is a JSON schema whose answer
# must be one line of a list, here the whole code table or the five retrieved codes; at each token the server
# masks every token that would leave the list). Free, a run shows whether the model follows the prompt's form;
# constrained, whether the prompt carries the right answer at all.

# %%
prompting_test = test[:N_PROMPTING] if N_PROMPTING else test
long_prompt_test = prompting_test[:N_LONG_PROMPT] if N_LONG_PROMPT else prompting_test
rag_prompt = lambda messages: retrieval.with_retrieval(messages, RETRIEVED_CODES)
retrieved = lambda messages: retrieval.candidate_answers(messages, RETRIEVED_CODES)
prompts = {"base + long prompt": (scenarios.with_long_prompt, None, long_prompt_test), "base + RAG": (rag_prompt, None, prompting_test),
           "base + long prompt, constrained": (scenarios.with_long_prompt, billing.all_answers, long_prompt_test),
           "base + RAG, constrained": (rag_prompt, retrieved, prompting_test)}
prompting = pd.DataFrame({name: evaluation.summarize(evaluation.evaluate(course.client, BASE_MODEL, requests, prompt=prompt,
                                                                         choices=choices, max_tokens=MAX_TOKENS, concurrency=CONCURRENCY),
                                                     priced_as=BASE_MODEL, fine_tuned=False)
                          for name, (prompt, choices, requests) in prompts.items()})
offered = {name: {"coverage": evaluation.choice_coverage(requests, choices), "choices": len(choices(requests[0]["messages"][:-1]))}
           for name, (_, choices, requests) in prompts.items() if choices is not None}
course.record(prompting=prompting.to_dict(), prompting_offered=offered)
course.findings("prompting", evaluation.prompting_findings(summary["base"].to_dict(), prompting.to_dict(), offered))
prompting.loc[["code_accuracy", "code_accuracy_ci_low", "code_accuracy_ci_high", "format_compliance", "input_tokens",
               "latency_p50_s", "usd_per_1000_queries"]].round(4)

# %% [markdown]
# ### 3.3 Which codes it gets wrong
# The fine-tuned model's accuracy per code (worst first), its wrong answers sorted by kind, and a few of them.

# %%
evaluation.per_code(tuned_results).head(10)

# %%
course.record(mistakes=evaluation.mistakes(tuned_results).to_dict())
course.findings("mistakes", evaluation.mistake_findings(tuned_results))
evaluation.worst_mistakes(tuned_results)

# %% [markdown]
# ### 3.4 Facts it has never seen
# Six codes never appear in the training data (`test_new_codes.jsonl` holds five requests for each; the first
# `N_NEW_CODES` requests are used here). Fine-tuning cannot teach them; retrieval can put them in the prompt, and notebook 03
# trained the model to use such candidates. Code accuracy on those requests, with and without the top retrieved
# codes in the prompt:

# %%
new_codes = dataprep.read_jsonl(REPO_ROOT / "data/billing/test_new_codes.jsonl", N_NEW_CODES)
with_rag = lambda messages: retrieval.with_retrieval(messages, RETRIEVED_CODES)
runs = {"base": (BASE_MODEL, None), "base + RAG": (BASE_MODEL, with_rag), "fine-tuned": (tuned, None), "fine-tuned + RAG": (tuned, with_rag)}
unseen_results = {name: evaluation.evaluate(course.client, model, new_codes, prompt=prompt, max_tokens=MAX_TOKENS, concurrency=CONCURRENCY)
                  for name, (model, prompt) in runs.items()}
unseen = pd.DataFrame({name: evaluation.summarize(unseen_results[name], priced_as=BASE_MODEL, fine_tuned=model != BASE_MODEL)
                       for name, (model, _) in runs.items()})
course.record(new_codes=unseen.loc[["code_accuracy", "format_compliance", "input_tokens"]].to_dict())
unseen.loc[["code_accuracy", "format_compliance", "exact_match", "input_tokens", "usd_per_1000_queries"]].round(4)

# %% [markdown]
# ### 3.5 Two counts of the same tokens
# > **On the local stand-in (SmolLM2-135M).** The server reports input tokens counted with the local model's
# > tokenizer (SmolLM2's); 01 counted the same prompts with OpenAI's (`o200k_base`). The tables here price the server's
# > count at OpenAI's prices. **On OpenAI or a bigger model:** `usage` counts with that model's own tokenizer (on
# > OpenAI, `o200k_base`), so the two counts below are one.

# %%
openai_tokens = sum(scenarios.openai_input_tokens(row["messages"][:-1]) for row in test) / len(test)
course.record(openai_input_tokens=openai_tokens)
course.findings("tokens", evaluation.token_findings(summary["fine-tuned"].to_dict(), openai_tokens))

# %% [markdown]
# ## 4. Summary
# What the tables above show, written from their numbers:

# %%
n_unseen_codes = len({billing.parse_answer(row["messages"][-1]["content"])[0] for row in new_codes})
course.findings("comparison", evaluation.comparison_findings(summary["base"].to_dict(), summary["fine-tuned"].to_dict(),
                                                             unseen.to_dict(), n_unseen_codes)
                + evaluation.seed_findings(summary["fine-tuned"].to_dict(), unseen.to_dict())
                + evaluation.takeaway_findings(summary["base"].to_dict(), summary["fine-tuned"].to_dict(), unseen.to_dict(), unseen_results))

# %% [markdown]
# - Compare on held-out data, and look at format compliance as well as accuracy: an answer your system cannot
#   parse is a failure whatever it says.
# - A small sample gives a wide interval: read the 95% confidence intervals before the point estimates.
# - Before training for a form, ask whether the prompt carries the answer: impose the form (constrained decoding,
#   `response_format`) and see what the base model picks. Training is for what is still missing then.
#
# **Exercises.** (1) Run with `N_TEST = 0` for the whole test set. (2) Try a checkpoint model from notebook 03
# as `TUNED_MODEL`: is an earlier epoch better?
