"""The course notebooks: structure, papermill runs with recorded values, nbval, widgets without a browser."""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import nbformat
import papermill
import pytest

from conftest import DATA, REPO
from helpers import notebook_sources, scenarios
from helpers.costs import estimate_training_cost
from helpers.validate import validate_file
from server_harness import free_port

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]
SECTIONS = ["## 1. Why", "## 2. What", "## 3. Hands-on", "## 4. Summary"]


def test_every_source_has_a_committed_notebook_with_the_same_cells():
    assert NAMES == sorted(notebook_sources.NOTEBOOKS)
    for path in NOTEBOOKS:
        committed = nbformat.read(path, as_version=4)
        built = notebook_sources.notebook(path.stem)
        assert [(c.cell_type, c.source, c.metadata.get("tags")) for c in committed.cells] == \
               [(c.cell_type, c.source, c.metadata.get("tags")) for c in built.cells], f"run scripts/build_notebooks.py --execute ({path.name})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_structure(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "**Time:**" in nb.cells[0].source and "**Cost:**" in nb.cells[0].source
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and nb.cells.index(parameters[0]) == 1
    for statement in ast.parse(parameters[0].source).body:  # UPPER_CASE = literal, nothing derived
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1
        name = statement.targets[0].id
        assert name.isupper(), name
        ast.literal_eval(statement.value)
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    assert sum(s.count("setup(") for s in sources) == 1 and "setup(" in sources[1]
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines() if line.startswith("## ")]
    positions = [next(i for i, h in enumerate(headings) if h.startswith(s)) for s in SECTIONS]
    assert positions == sorted(positions), headings
    text = path.read_text()
    assert "sk-" not in text and "OPENAI_API_KEY=" not in text
    for cell in nb.cells:
        assert all(o.get("output_type") != "error" for o in cell.get("outputs", []))


@pytest.fixture(scope="module")
def course_env(tmp_path_factory):
    """Point notebooks at a server and metrics folder of the test's own; stop that server afterwards."""
    root = tmp_path_factory.mktemp("course")
    port = free_port()
    env = {"WORKBOOK_METRICS_DIR": str(root / "metrics"), "WORKBOOK_SERVER_DIR": str(root / "server"),
           "WORKBOOK_PORT": str(port), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield root
    try:
        os.kill(httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["pid"], signal.SIGTERM)
    except (httpx.HTTPError, OSError):
        pass
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run(name: str, root: Path, **parameters) -> dict:
    papermill.execute_notebook(REPO / "notebooks" / f"{name}.ipynb", root / f"{name}.out.ipynb", parameters=parameters,
                               cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False)
    executed = nbformat.read(root / f"{name}.out.ipynb", as_version=4)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    return json.loads((root / "metrics" / f"{name}.json").read_text())


def test_00_start_here_reaches_the_backend(course_env):
    metrics = run("00_start_here", course_env)
    assert metrics["backend"] == "local" and metrics["n_models"] >= 5 and metrics["first_reply_tokens"] > 0


def test_01_costs_match_the_price_table(course_env):
    metrics = run("01_when_to_fine_tune", course_env, RETRAINS_PER_YEAR=12)
    sizes = scenarios.measure_prompt_sizes()
    assert metrics["prompt_sizes"] == sizes.__dict__
    approaches = scenarios.course_approaches(sizes, retrains_per_year=12)
    for approach in approaches:
        for volume, cost in metrics["monthly_cost"][approach.name].items():
            assert cost == pytest.approx(approach.monthly_cost(int(volume)), abs=0.005)
    assert metrics["break_even"]["prompting"] is None
    assert metrics["break_even"]["fine-tuned"] > 0
    assert metrics["course_training_cost_usd"] == pytest.approx(estimate_training_cost("gpt-4.1-mini", sizes.train_examples * sizes.train_tokens_per_example, sizes.train_examples).cost_usd)


def test_02_data_prep_reports_on_course_data_and_a_csv(course_env, tmp_path):
    metrics = run("02_data_prep", course_env)
    report = validate_file(DATA / "billing" / "train.jsonl", model="gpt-4.1-mini")
    assert metrics["ok"] and metrics["n_examples"] == report.n_examples and metrics["total_tokens"] == report.total_tokens
    assert {"invalid_json", "invalid_weight", "not_utf8", "mixed_formats"} <= set(metrics["flawed_error_codes"])
    assert metrics["training_cost_usd"]["gpt-4.1-mini"] == pytest.approx(report.cost["cost_usd"])
    assert sum(metrics["split"].values()) == report.n_examples
    csv = tmp_path / "team.csv"
    csv.write_text("question,answer\n" + "".join(f"what is {i}?,It is {i}.\n" for i in range(12)))
    metrics = run("02_data_prep", course_env, DATASET_PATH=str(csv), CSV_PROMPT_COLUMN="question", CSV_COMPLETION_COLUMN="answer")
    assert metrics["ok"] and metrics["n_examples"] == 12


def test_nbval_checks_the_deterministic_outputs(course_env):
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                             "--nbval-sanitize-with", str(REPO / "tests" / "nbval_sanitize.cfg"), *map(str, NOTEBOOKS)],
                            cwd=REPO / "notebooks", capture_output=True, text=True, timeout=1200, env=os.environ)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_cost_explorer_reacts_to_its_sliders():
    from helpers.widgets import CostExplorer

    explorer = CostExplorer(scenarios.measure_prompt_sizes())
    before = dict(explorer.summary["monthly_cost_usd"])
    explorer.queries.value = explorer.queries.value * 10
    after = explorer.summary["monthly_cost_usd"]
    assert all(after[name] > before[name] for name in before)
    crossing = explorer.summary["break_even_vs_prompting"]["fine-tuned"]
    explorer.retrains.value = 52
    assert explorer.summary["break_even_vs_prompting"]["fine-tuned"] > crossing
    assert f"{explorer.queries.value:,}" in explorer.text.value
    explorer.input_tokens.value = 2_000
    assert explorer.summary["cheapest"] in {"fine-tuned", "distilled", "RAG", "prompting"}
    assert explorer.table.loc[explorer.queries.value, "prompting"] == pytest.approx(explorer.summary["monthly_cost_usd"]["prompting"], abs=0.005)
