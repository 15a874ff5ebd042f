"""The course notebooks as cell lists: the one source ``scripts/build_notebooks.py`` writes them from.

Every notebook has the same skeleton: a one-line time/cost banner, a ``parameters`` cell (UPPER_CASE
literals, fast defaults; ``make reports`` passes course-sized values), one ``helpers.course.setup`` call,
then **Why -> What -> Hands-on -> Summary** with exercises. Cells stay short: they call a helper and show
its result. ``# NBVAL_CHECK_OUTPUT`` marks deterministic cells whose output nbval compares.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

from helpers.paths import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text: str, *tags: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def params(text: str) -> nbformat.NotebookNode:
    return code(text, "parameters")


def checked(text: str) -> nbformat.NotebookNode:
    """A deterministic cell whose output nbval compares (the marker must be a line of its own)."""
    return code("# NBVAL_CHECK_OUTPUT\n" + text.strip())


NOTEBOOKS: dict[str, list[nbformat.NotebookNode]] = {}

NOTEBOOKS["00_start_here"] = [
    md("""
# 00 · Start here
**Time:** about 1 minute on a laptop CPU · **Cost:** $0 on the local backend; one short chat request on OpenAI.
"""),
    params("""
BACKEND = "local"  # "local" (default, $0, offline) or "openai" (needs OPENAI_API_KEY in the environment)
"""),
    code("""
from helpers.course import setup, environment_report
course = setup("00_start_here", BACKEND)
"""),
    md("""
## 1. Why
Fine-tuning is the third rung of a ladder: a better prompt, then retrieval (RAG), then fine-tuning, then
distillation into a smaller model. Each rung costs more to set up and fixes a different problem. This course
shows when each one pays off, and does every step for real: prepare data, train, evaluate, distill.

OpenAI is closing self-serve fine-tuning to new jobs, and a workshop room has no budget, so the default
backend is a server on this machine that answers OpenAI's API and really trains a small open model. The same
cells run against OpenAI when you choose it.
"""),
    md("""
## 2. What
| notebook | you will |
|---|---|
| `01_when_to_fine_tune` | climb the ladder, price each rung from the dated price table, find the break-even volume |
| `02_data_prep` | validate a fine-tuning file, fix the usual mistakes, count tokens and cost |
| `03_training` | upload, start a job, follow it, read its loss curves and checkpoints |
| `04_inference_and_eval` | compare the base and the fine-tuned model on held-out data; see what needs RAG |
| `05_distillation` | let a teacher label data, train a cheaper student, compare accuracy and cost |

Every notebook opens with a `parameters` cell. Fast defaults run in a minute or two; `make reports` runs the
course-sized values and writes HTML reports to `reports/`.
"""),
    md("""
## 3. Hands-on
### 3.1 Your environment
"""),
    code("""
environment_report(course)
"""),
    md("""
### 3.2 The models the backend offers
On the local backend, OpenAI's model names are aliases for one small open model, so code written for OpenAI
runs unchanged. On OpenAI you see your organisation's models.
"""),
    code("""
models = [m.id for m in course.client.models.list().data]
course.record(n_models=len(models))
models[:12]
"""),
    md("""
### 3.3 A first request
"""),
    code("""
reply = course.client.chat.completions.create(
    model="gpt-4.1-mini", max_tokens=40,
    messages=[{"role": "user", "content": "In one sentence: what is a CPT code?"}])
course.record(first_reply_tokens=reply.usage.total_tokens)
print(reply.choices[0].message.content)
print(reply.usage)
"""),
    md("""
### 3.4 Running the course as a workshop or as reports
- **Workshop:** one person runs `workbook serve --host 0.0.0.0`; everyone sets `WORKBOOK_BACKEND=local`
  and points at it. Each API key is its own workspace: nobody sees anyone else's files, jobs or models.
- **Reports:** `make reports` executes every notebook with course-sized parameters and writes HTML to
  `reports/`; `workbook report 02_data_prep -p DATASET_PATH my.jsonl` does one notebook on your own data.
"""),
    md("""
## 4. Summary
- The backend is chosen once, in `setup`; every later cell speaks the plain `openai` client.
- Locally, `gpt-4.1-mini` and friends are stand-ins served by a small open model, so expect lower quality
  and $0 cost; the workflow and the numbers it computes are the real thing.

**Exercise.** Ask the model another question; then run this notebook with `BACKEND = "openai"` (with a key
in your environment) and compare the answers.
"""),
]

NOTEBOOKS["01_when_to_fine_tune"] = [
    md("""
# 01 · When to fine-tune
**Time:** under a minute · **Cost:** $0 (no API calls; every price comes from `data/prices.json`).
"""),
    params("""
BACKEND = "local"
QUERIES_PER_MONTH = 100_000
VOLUMES = [1_000, 10_000, 100_000, 1_000_000]
RETRAINS_PER_YEAR = 4
CLAIM_LOW_USD = 50
CLAIM_HIGH_USD = 500
"""),
    code("""
import pandas as pd
from helpers.course import setup
from helpers import costs, scenarios, decision
course = setup("01_when_to_fine_tune", BACKEND)
"""),
    md("""
## 1. Why
Fine-tuning is not the first thing to try. A better prompt costs nothing to set up; retrieval (RAG) adds
facts the model cannot know; fine-tuning teaches a format, a style or a narrow skill; distillation moves a
big model's skill into a small, cheap one. Each rung costs more up front, and pays back only at enough volume.
"""),
    md("""
## 2. What
### 2.1 The ladder, as rules you can argue with
"""),
    checked("""
tasks = [
    decision.Task("one-off report summaries", True, False, False, 0, 2_000),
    decision.Task("answers from our internal wiki", False, True, False, 20, 50_000),
    decision.Task("medical billing codes, strict format", False, False, True, 333, 300_000),
    decision.Task("support triage a big model does well", True, False, True, 5_000, 2_000_000),
]
pd.DataFrame([(t.name, *decision.recommend(t)) for t in tasks], columns=["task", "next rung", "why"]).set_index("task")
"""),
    md("""
### 2.2 What each rung costs
OpenAI's prices, dated, with a source for every row. Fine-tuned models cost more per token than their base
models; training is paid per token per epoch.
"""),
    checked("""
print(f"Prices as of {costs.price_table()['as_of']}. {costs.price_table()['notice']}")
costs.prices_frame()
"""),
    md("""
## 3. Hands-on: price the billing task four ways
### 3.1 Measure the prompts
Token counts of real prompts for the course's test requests (tiktoken, `o200k_base`): prompting carries the
whole code table and 20 worked examples; RAG carries five retrieved codes; the fine-tuned and distilled
models need only the one-line instruction.
"""),
    checked("""
sizes = scenarios.measure_prompt_sizes()
course.record(prompt_sizes=sizes.__dict__)
sizes
"""),
    md("""
### 3.2 Monthly cost at several volumes, and where the lines cross
Training is paid `RETRAINS_PER_YEAR` times a year and spread over the months.
"""),
    checked("""
approaches = scenarios.course_approaches(sizes, retrains_per_year=RETRAINS_PER_YEAR)
table = scenarios.scenario_table(approaches, VOLUMES)
course.record(monthly_cost=table.drop(columns="cheapest").to_dict())
table
"""),
    checked("""
break_even = scenarios.break_even_table(approaches)
course.record(break_even=break_even["cheaper_than_prompting_from"].to_dict())
break_even
"""),
    md("""
### 3.3 Explore
Move the sliders: the chart and the break-even points follow. (In an executed report the sliders are frozen;
the tables above hold the numbers.)
"""),
    code("""
from helpers.widgets import CostExplorer
explorer = CostExplorer(sizes)
explorer.queries.value = QUERIES_PER_MONTH
explorer.retrains.value = RETRAINS_PER_YEAR
explorer.show()
"""),
    md("""
### 3.4 Check a claim: "fine-tuning GPT-4.1-mini costs $50-$500"
How many training examples does that budget buy, at the course's measured example size and at longer ones?
"""),
    checked("""
claim = pd.DataFrame([
    {"tokens_per_example": n,
     f"examples for ${CLAIM_LOW_USD}": scenarios.examples_for_budget("gpt-4.1-mini", CLAIM_LOW_USD, n),
     f"examples for ${CLAIM_HIGH_USD}": scenarios.examples_for_budget("gpt-4.1-mini", CLAIM_HIGH_USD, n)}
    for n in (sizes.train_tokens_per_example, 500, 2_000)]).set_index("tokens_per_example")
course.record(course_training_cost_usd=costs.training_cost("gpt-4.1-mini", sizes.train_examples, sizes.train_tokens_per_example))
claim
"""),
    md("""
## 4. Summary
- Prompting has no set-up cost but the longest prompts: at low volume it wins, at high volume it loses.
- Fine-tuning pays for training once per retrain, then saves on every query through a short prompt.
- The course's own data is far below "$50": the claim holds for datasets tens of times larger.

**Exercises.** (1) Set `RETRAINS_PER_YEAR = 52` (weekly): where does fine-tuning stop paying? (2) Raise the
input tokens slider to 2,000 (a long document per query): which approach wins now, and why?
"""),
]

NOTEBOOKS["02_data_prep"] = [
    md("""
# 02 · Data preparation
**Time:** about 1 minute · **Cost:** $0 (validation is local; the table in 3.5 shows what training would cost on OpenAI).
"""),
    params("""
BACKEND = "local"
DATASET_PATH = "data/billing/train.jsonl"  # your own .jsonl, or a .csv with the columns below
CSV_PROMPT_COLUMN = "prompt"
CSV_COMPLETION_COLUMN = "completion"
CSV_SYSTEM_PROMPT = ""
MODEL = "gpt-4.1-mini"
VALIDATION_FRACTION = 0.2
SEED = 1
"""),
    code("""
from pathlib import Path
import matplotlib.pyplot as plt
import pandas as pd
from helpers.course import setup
from helpers import dataprep, validate, costs, catalogue
from helpers.paths import REPO_ROOT
course = setup("02_data_prep", BACKEND)
"""),
    md("""
## 1. Why
A fine-tuning job that fails on line 4,812 after an hour in the queue, or succeeds on duplicated, truncated
examples, wastes money and time. Checking the file first is cheap and catches nearly everything.
"""),
    md("""
## 2. What
A fine-tuning file is JSON Lines: one example per line, each a chat (`messages`: system, user, assistant,
optionally tools) or a preference pair for DPO. The validator checks every line against OpenAI's rules,
counts tokens with the model's own tokenizer, and estimates the training cost. Each problem comes with its
line number, a stable code and what to change.
"""),
    md("""
## 3. Hands-on
### 3.1 Load the data
A `.csv` is turned into chat examples first, with the column names from the parameters.
"""),
    code("""
path = dataprep.as_jsonl(REPO_ROOT / DATASET_PATH, REPO_ROOT / ".workbook" / "data", prompt_column=CSV_PROMPT_COLUMN,
                         completion_column=CSV_COMPLETION_COLUMN, system_prompt=CSV_SYSTEM_PROMPT)
report = validate.validate_file(path, model=MODEL)
course.record(ok=report.ok, n_examples=report.n_examples, total_tokens=report.total_tokens, format=report.format)
print(report.summary())
"""),
    md("""
### 3.2 What a broken file looks like
`data/billing/flawed.jsonl` breaks one rule per line. Each row says where and what to change.
"""),
    checked("""
flawed = validate.validate_file(REPO_ROOT / "data/billing/flawed.jsonl", model=MODEL)
course.record(flawed_error_codes=sorted(flawed.stats["error_counts"]))
flawed.problems_frame()
"""),
    md("""
Fixes, in order of how often they bite: save as UTF-8 (line 15); one complete JSON object per line (5, 9,
17); roles are `system`, `user`, `assistant`, `tool` (6); every example ends with the assistant reply you
want (4); `weight` is 0 or 1 and only on assistant messages (7, 8); tool-call `arguments` are a JSON string
(10) and a `tool` message answers a call made earlier in the same example (11).
"""),
    md("""
### 3.3 Token statistics
Per example: min, mean, median, the true 5th and 95th percentiles, and max. Long outliers cost money and
may be truncated.
"""),
    code("""
stats = pd.DataFrame({k: report.stats[k] for k in ("messages_per_example", "total_tokens_per_example", "assistant_tokens_per_example")})
stats
"""),
    code("""
hist = report.histograms["total_tokens"]
figure, axis = plt.subplots()
axis.bar(list(hist), list(hist.values()), width=1.0)
axis.set(xlabel="tokens per example", ylabel="examples", title=f"{Path(path).name}: {report.n_examples} examples")
plt.show()
"""),
    md("""
### 3.4 Duplicates and gaps
"""),
    code("""
{k: report.stats[k] for k in ("exact_duplicates", "near_duplicates", "missing_system", "missing_user", "over_token_limit")}
"""),
    md("""
### 3.5 What training would cost on OpenAI
Billing tokens per epoch (each example capped at the model's limit) x epochs ("auto": OpenAI's rule) x the
training price, for every model priced per token.
"""),
    code("""
rows = []
for model in ("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini"):
    estimate = costs.estimate_training_cost(model, report.stats["billing_tokens_per_epoch"], report.stats["valid_examples"])
    rows.append(estimate.as_dict())
estimates = pd.DataFrame(rows).set_index("model")
course.record(training_cost_usd=estimates["cost_usd"].to_dict())
estimates
"""),
    md("""
### 3.6 Split off a validation set
A validation file lets the job report validation loss, which tells you when the model starts to overfit.
"""),
    code("""
train_path, valid_path = dataprep.split_file(path, REPO_ROOT / ".workbook" / "data", VALIDATION_FRACTION, SEED)
split = {p.name: validate.validate_file(p, model=MODEL, min_examples=1).n_examples for p in (train_path, valid_path)}
course.record(split=split)
split
"""),
    md("""
## 4. Summary
- Validate before you upload: every problem has a line number and a fix.
- Count tokens with the model's own encoding (`o200k_base` for GPT-4o and GPT-4.1), not `cl100k_base`.
- The cost of training is tokens x epochs x price; the course data costs cents, not dollars.

**Exercises.** (1) Copy `flawed.jsonl`, fix it line by line, and validate until it is ready. (2) Run this
notebook on your own data: `workbook report 02_data_prep -p DATASET_PATH my_data.csv -p CSV_PROMPT_COLUMN question`.
"""),
]


NOTEBOOKS["03_training"] = [
    md("""
# 03 · Training
**Time:** about 4 minutes with the defaults (2 epochs), about 6 minutes at course size (3 epochs) on a 2-core CPU · **Cost:** $0 locally; on OpenAI, the estimate printed in 3.1 (the budget guard refuses anything above `MAX_SPEND_USD`).
"""),
    params("""
BACKEND = "local"
MODEL = "gpt-4.1-mini"
TRAIN_PATH = "data/billing/train.jsonl"
VALID_PATH = "data/billing/validation.jsonl"
N_TRAIN = 0  # examples to train on (0 means all; fewer than all learns few codes in 2 epochs)
N_VALID = 12  # 0 means all
N_EPOCHS = 2  # or "auto" (OpenAI's rule: 3 for the whole set)
BATCH_SIZE = "auto"  # the local server picks 4
RAG_SHARE = 0.25  # share of training examples that carry retrieved candidate codes in their prompt
RETRIEVED_CODES = 5
SUFFIX = "billing"
SEED = 1
MAX_SPEND_USD = 1.0
"""),
    code("""
from helpers.course import setup
from helpers import dataprep, validate, costs, finetune, retrieval
from helpers.paths import REPO_ROOT
course = setup("03_training", BACKEND)
work = REPO_ROOT / ".workbook" / "data"
"""),
    md("""
## 1. Why
The data is ready (notebook 02). Training is where time and money go, so start small, watch the curves,
and stop early if something is off.
"""),
    md("""
## 2. What
A fine-tuning **job** takes an uploaded training file (and optionally a validation file), a base model and a
few hyperparameters. It moves through `validating_files -> queued -> running -> succeeded`, reports a loss
per step, saves a checkpoint per epoch and finally names a new model, `ft:<base>:<org>:<suffix>:<id>`, that
you call like any other. Epochs are full passes over the data; the batch size is how many examples each
step sees; the learning-rate multiplier scales the step size.
"""),
    md("""
## 3. Hands-on
### 3.1 Check the files and the budget
A quarter of the training examples (`RAG_SHARE`) get the five codes retrieval finds for them in their prompt,
so the model learns to use retrieved codes as well as to answer from the one-line prompt: notebook 04 shows why.
Why a quarter, not all: those examples are about twice as long, so every one of them makes the job longer,
and the plain requests are what most of the test asks. Notebook 04 measures what the tuned model then does
with retrieved codes for codes it never trained on.
"""),
    code("""
subset, valid_path = dataprep.take(REPO_ROOT / TRAIN_PATH, N_TRAIN, work), dataprep.take(REPO_ROOT / VALID_PATH, N_VALID, work)
train_path = work / f"{subset.stem}_rag.jsonl"
n_with_codes = retrieval.augment_file(subset, train_path, RAG_SHARE, RETRIEVED_CODES, SEED)
report = validate.validate_file(train_path, model=MODEL)
estimate = costs.estimate_training_cost(MODEL, report.stats["billing_tokens_per_epoch"], report.n_examples, N_EPOCHS)
course.record(n_train=report.n_examples, n_with_retrieved_codes=n_with_codes, rag_share=RAG_SHARE, estimated_cost_usd=estimate.cost_usd, ready=report.ok)
print(report.summary())
print(finetune.budget_guard(course.backend, estimate.cost_usd, MAX_SPEND_USD))
"""),
    md("""
### 3.2 Upload and start the job
"""),
    code("""
train_file, valid_file = finetune.upload(course.client, train_path), finetune.upload(course.client, valid_path)
job = finetune.start_job(course.client, training_file=train_file.id, validation_file=valid_file.id, model=MODEL,
                         suffix=SUFFIX, seed=SEED, metadata=finetune.COURSE_METADATA,
                         hyperparameters={"n_epochs": N_EPOCHS, "batch_size": BATCH_SIZE})
print(job.id, job.status)
"""),
    md("""
### 3.3 Follow it
The bar counts training steps; the job's own messages are printed as they arrive. The job runs on the server,
not in this kernel: if the kernel restarts, run the set-up cell and then
`job = finetune.follow(course.client, finetune.latest_job(course.client, finetune.COURSE_METADATA).id)`.
"""),
    code("""
job = finetune.follow(course.client, job.id)
course.record(status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
              hyperparameters=job.hyperparameters.model_dump())
print(job.status, job.fine_tuned_model, "trained tokens:", job.trained_tokens)
"""),
    md("""
### 3.4 Read the curves
Training loss should fall; validation loss should fall with it. When validation loss turns up while training
loss keeps falling, the model is memorising: fewer epochs, or more data.
"""),
    code("""
curves = finetune.results_frame(course.client, job)
course.record(first_train_loss=float(curves["train_loss"].iloc[0]), last_train_loss=float(curves["train_loss"].iloc[-1]))
finetune.plot_results(curves);
"""),
    md("""
### 3.5 Checkpoints
One per epoch (the last three are kept). Each is a model you can call, useful when a later epoch overfits.
"""),
    code("""
checkpoints = finetune.checkpoints_frame(course.client, job.id)
course.record(n_checkpoints=len(checkpoints))
checkpoints
"""),
    md("""
### 3.6 Ask the new model
"""),
    code("""
example = dataprep.read_jsonl(REPO_ROOT / "data/billing/test.jsonl", 1)[0]
reply = course.client.chat.completions.create(model=job.fine_tuned_model, messages=example["messages"][:-1], max_tokens=32)
print("request: ", example["messages"][1]["content"])
print("expected:", example["messages"][2]["content"])
print("answer:  ", reply.choices[0].message.content)
"""),
    md("""
## 4. Summary
- A job is a few API calls: upload, create, follow; the result is a model name.
- Watch training and validation loss together; keep the checkpoint before validation loss rises.
- `trained_tokens` is what OpenAI bills: tokens per epoch x epochs.

**Exercises.** (1) Train on all examples with `N_EPOCHS = "auto"`; compare the curves. (2) Set
`MAX_SPEND_USD = 0.01` with `BACKEND = "openai"`: what does the budget guard say?
"""),
]

NOTEBOOKS["04_inference_and_eval"] = [
    md("""
# 04 · Inference and evaluation
**Time:** about 1 minute with the defaults, about 6 minutes on the whole test set · **Cost:** $0 locally; on OpenAI, `N_TEST` x 2 + `N_NEW_CODES` x 4 short requests (the table in 3.1 prices them).
"""),
    params("""
BACKEND = "local"
BASE_MODEL = "gpt-4.1-mini"
TUNED_MODEL = ""  # empty: the newest model notebook 03 trained
N_TEST = 16  # 0 means all held-out test requests
N_NEW_CODES = 6  # 0 means all requests for codes absent from training
RETRIEVED_CODES = 5
MAX_TOKENS = 32
CONCURRENCY = 8
"""),
    code("""
import pandas as pd
from helpers.course import setup
from helpers import dataprep, evaluation, finetune, retrieval
from helpers.paths import REPO_ROOT
course = setup("04_inference_and_eval", BACKEND)
tuned = finetune.course_model(course.client, TUNED_MODEL)
print("fine-tuned model:", tuned)
"""),
    md("""
## 1. Why
A falling loss curve is not a result. What matters is how the model answers requests it has never seen, how
often the answer is usable at all, how fast, and at what price.
"""),
    md("""
## 2. What
Four measures on the held-out test set (phrasings never seen in training): **exact match** (the whole answer
right), **format compliance** (parseable as `CPT Code: NNNNN - Description`), **code accuracy** (the right
code), and **latency** (p50, p95). Then the course's key lesson, measured: fine-tuning teaches format and
style; facts the model never saw have to come from retrieval.
"""),
    md("""
## 3. Hands-on
### 3.1 Base vs fine-tuned on held-out requests
Priced at OpenAI's prices for the model each one stands in for.
"""),
    code("""
test = dataprep.read_jsonl(REPO_ROOT / "data/billing/test.jsonl", N_TEST)
base_results = evaluation.evaluate(course.client, BASE_MODEL, test, max_tokens=MAX_TOKENS, concurrency=CONCURRENCY)
tuned_results = evaluation.evaluate(course.client, tuned, test, max_tokens=MAX_TOKENS, concurrency=CONCURRENCY)
summary = pd.DataFrame({"base": evaluation.summarize(base_results, priced_as=BASE_MODEL, fine_tuned=False),
                        "fine-tuned": evaluation.summarize(tuned_results, priced_as=BASE_MODEL, fine_tuned=True)})
course.record(base=summary["base"].to_dict(), tuned=summary["fine-tuned"].to_dict(), n_test=len(test))
summary.round(4)
"""),
    md("""
### 3.2 Which codes it gets wrong
"""),
    code("""
evaluation.per_code(tuned_results).head(10)
"""),
    code("""
evaluation.worst_mistakes(tuned_results)
"""),
    md("""
### 3.3 Facts it has never seen
Six codes never appear in the training data. Fine-tuning cannot teach them; retrieval can put them in the
prompt, and notebook 03 trained the model to use such candidates. Code accuracy on those requests, with and
without the top retrieved codes in the prompt:
"""),
    code("""
new_codes = dataprep.read_jsonl(REPO_ROOT / "data/billing/test_new_codes.jsonl", N_NEW_CODES)
with_rag = lambda messages: retrieval.with_retrieval(messages, RETRIEVED_CODES)
runs = {"base": (BASE_MODEL, None), "base + RAG": (BASE_MODEL, with_rag), "fine-tuned": (tuned, None), "fine-tuned + RAG": (tuned, with_rag)}
unseen = pd.DataFrame({name: evaluation.summarize(evaluation.evaluate(course.client, model, new_codes, prompt=prompt,
                                                                      max_tokens=MAX_TOKENS, concurrency=CONCURRENCY),
                                                  priced_as=BASE_MODEL, fine_tuned=model != BASE_MODEL)
                       for name, (model, prompt) in runs.items()})
course.record(new_codes=unseen.loc[["code_accuracy", "format_compliance", "input_tokens"]].to_dict())
unseen.loc[["code_accuracy", "format_compliance", "exact_match", "input_tokens", "usd_per_1000_queries"]].round(4)
"""),
    md("""
## 4. Summary
- Compare on held-out data, and look at format compliance as well as accuracy: an answer your system cannot
  parse is a failure whatever it says.
- Fine-tuning made the format reliable; the codes it never saw still need retrieval, which costs input tokens.

**Exercises.** (1) Run with `N_TEST = 0` for the whole test set. (2) Try a checkpoint model from notebook 03
as `TUNED_MODEL`: is an earlier epoch better?
"""),
]

NOTEBOOKS["05_distillation"] = [
    md("""
# 05 · Distillation
**Time:** about 2 minutes with the defaults, about 10 minutes at course size · **Cost:** $0 locally; on OpenAI, `N_POOL` teacher requests plus a student training run (the budget guard checks it).
"""),
    params("""
BACKEND = "local"
TEACHER_MODEL = ""  # empty: locally, the model notebook 03 trained, given retrieved codes (on OpenAI use "gpt-4.1")
TEACHER_PRICED_AS = "gpt-4.1"
STUDENT_BASE = "gpt-4.1-nano"
N_POOL = 48  # unlabeled requests for the teacher (0 means all)
RETRIEVED_CODES = 5
N_TEST = 16  # 0 means all
N_EPOCHS = 2
BATCH_SIZE = 4
SEED = 1
MAX_SPEND_USD = 1.0
MAX_TOKENS = 32
CONCURRENCY = 8
"""),
    code("""
import uuid
import pandas as pd
from helpers.course import setup
from helpers import billing, costs, dataprep, distill, evaluation, finetune, retrieval, validate
from helpers.paths import REPO_ROOT
course = setup("05_distillation", BACKEND)
teacher = finetune.course_model(course.client, TEACHER_MODEL)
run_id = f"distill-{uuid.uuid4().hex[:8]}"
print("teacher:", teacher, "| student base:", STUDENT_BASE, "| run:", run_id)
"""),
    md("""
## 1. Why
A big model with a long prompt answers well but costs a lot per query. If it can label your traffic, a small
model trained on its answers can do the same job with a short prompt, for a fraction of the price.
"""),
    md("""
## 2. What
1. The **teacher** answers unlabeled requests; each answer is stored (`store=True`) with `metadata`.
2. We read the answers back with `chat.completions.list(metadata=...)` and keep only good ones.
3. The **student** is fine-tuned on those answers, with a short prompt.
4. We compare teacher, student base and student on the held-out test set: accuracy, latency, input tokens, $.
"""),
    md("""
## 3. Hands-on
### 3.1 The teacher labels the pool
"""),
    code("""
pool = dataprep.read_jsonl(REPO_ROOT / "data/billing/pool.jsonl", N_POOL)
distill.label_pool(course.client, teacher, pool, run_id, k=RETRIEVED_CODES, max_tokens=MAX_TOKENS, concurrency=CONCURRENCY)
answers = distill.collect(course.client, teacher, run_id)
course.record(n_pool=len(pool), n_collected=len(answers))
answers.head()
"""),
    md("""
### 3.2 Keep the good answers
In the answer format, a code that exists, and a code that retrieval also proposes for that request: two
independent sources agree. Kept answers get the code table's description, so the student learns it exactly.
"""),
    code("""
checked_answers = distill.filter_answers(answers, pool, RETRIEVED_CODES)
kept = checked_answers[checked_answers["keep"]]
course.record(n_kept=len(kept))
distill.require_enough(kept)
checked_answers[["format_ok", "known_code", "agrees_with_retrieval", "description_fixed", "keep"]].sum()
"""),
    md("""
### 3.3 Train the student on the teacher's answers
"""),
    code("""
student_path = REPO_ROOT / ".workbook" / "data" / f"{run_id}.jsonl"
distill.student_file(kept, pool, student_path, billing.SYSTEM_PROMPT)
report = validate.validate_file(student_path, model=STUDENT_BASE)
estimate = costs.estimate_training_cost(STUDENT_BASE, report.stats["billing_tokens_per_epoch"], report.n_examples, N_EPOCHS)
print(report.summary())
print(finetune.budget_guard(course.backend, estimate.cost_usd, MAX_SPEND_USD))
job = finetune.start_job(course.client, training_file=finetune.upload(course.client, student_path).id, model=STUDENT_BASE,
                         suffix="student", seed=SEED, metadata={"course": "billing-student", "run": run_id},
                         hyperparameters={"n_epochs": N_EPOCHS, "batch_size": BATCH_SIZE})
job = finetune.follow(course.client, job.id, show_events=False)
course.record(student_status=job.status, student_model=job.fine_tuned_model)
job.status, job.fine_tuned_model
"""),
    md("""
### 3.4 Teacher, student base and student on the test set
The teacher gets retrieved candidate codes in every prompt; the student needs only the one-line instruction.
"""),
    code("""
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
"""),
    md("""
## 4. Summary
- Distillation turns a strong, expensive setup into training data for a cheap one; the stored-completions
  API (`store=True`, `metadata`, `chat.completions.list`) collects it without a dashboard.
- Filter what the teacher says before training on it: a student copies mistakes as faithfully as answers.
- Locally the teacher is the fine-tuned model with retrieved codes in its prompt, and it is priced as
  `TEACHER_PRICED_AS`; on OpenAI the defaults would be teacher `gpt-4.1`, student `gpt-4.1-nano`.

**Exercises.** (1) Raise `N_POOL`: how do the student's accuracy and the share of kept answers change?
(2) Skip the filter (train on every answer): what happens to the student?
"""),
]


def notebook(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.from_dict(dict(cell)) for cell in NOTEBOOKS[name]]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                   "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding gives the same file
    return nb


CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"


def keep_checked_outputs(executed: nbformat.NotebookNode, fresh: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``fresh`` with the outputs of its NBVAL_CHECK_OUTPUT cells taken from ``executed`` (others empty)."""
    for new, ran in zip(fresh.cells, executed.cells):
        if new.cell_type == "code" and new.source.startswith(CHECK_MARKER):
            new.outputs = [nbformat.from_dict(o) for o in ran.get("outputs", [])]
            new.execution_count = ran.get("execution_count")  # nbval skips reference cells that never ran
    return fresh


def write_all(directory: Path = NOTEBOOK_DIR, *, execute: bool = False) -> list[Path]:
    """Write every notebook; with ``execute``, run it first (papermill) and store the expected outputs of
    its checked cells, which nbval then compares on every test run."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in NOTEBOOKS:
        path = directory / f"{name}.ipynb"
        fresh = notebook(name)
        if execute and any(c.cell_type == "code" and c.source.startswith(CHECK_MARKER) for c in fresh.cells):
            import tempfile

            import papermill

            with tempfile.TemporaryDirectory() as tmp:
                nbformat.write(fresh, Path(tmp) / "in.ipynb")
                papermill.execute_notebook(Path(tmp) / "in.ipynb", Path(tmp) / "out.ipynb", cwd=str(directory),
                                           kernel_name="python3", progress_bar=False)
                fresh = keep_checked_outputs(nbformat.read(Path(tmp) / "out.ipynb", as_version=4), fresh)
        elif path.exists():  # keep the stored outputs of checked cells whose source did not change
            old = {c.source: c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"}
            for cell in fresh.cells:
                if cell.cell_type == "code" and cell.source.startswith(CHECK_MARKER) and cell.source in old:
                    cell.outputs, cell.execution_count = old[cell.source].outputs, old[cell.source].execution_count
        nbformat.write(fresh, path)
        paths.append(path)
    return paths
