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
        if execute:
            import tempfile

            import papermill

            with tempfile.TemporaryDirectory() as tmp:
                nbformat.write(fresh, Path(tmp) / "in.ipynb")
                papermill.execute_notebook(Path(tmp) / "in.ipynb", Path(tmp) / "out.ipynb", cwd=str(directory),
                                           kernel_name="python3", progress_bar=False)
                fresh = keep_checked_outputs(nbformat.read(Path(tmp) / "out.ipynb", as_version=4), fresh)
        nbformat.write(fresh, path)
        paths.append(path)
    return paths
