"""Executed notebook reports: papermill runs a notebook with parameters, nbconvert renders it as HTML.

    workbook report 02_data_prep -p DATASET_PATH my.csv -p CSV_PROMPT_COLUMN question
    make reports        # every notebook with the course-sized parameters below

Reports go to ``reports/`` (the executed .ipynb and its .html). A report that would contain the value of
``OPENAI_API_KEY`` is deleted and the command fails.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import nbformat

from helpers.paths import NOTEBOOK_DIR, REPO_ROOT, notebook_names

REPORTS_DIR = REPO_ROOT / "reports"
#: Course-sized parameters for ``make reports`` (the notebooks' own defaults are the fast ones).
REPORT_PARAMETERS: dict[str, dict[str, Any]] = {
    # all 333 examples, OpenAI's "auto" epochs (3 for 333 examples) and the local "auto" batch size (4)
    "03_training": {"N_TRAIN": 0, "N_VALID": 0, "N_EPOCHS": "auto", "BATCH_SIZE": "auto"},
    # and the long prompt on the same 12 requests as the retrieved codes
    "04_inference_and_eval": {"N_TEST": 0, "N_NEW_CODES": 0, "N_LONG_PROMPT": 12},
    # the whole pool (444 requests): the student learns the codes from many phrasings, as the tuned model did in 03
    "05_distillation": {"N_POOL": 0, "N_TEST": 0, "N_EPOCHS": 3, "BATCH_SIZE": 4},
    # 06, 08, 09, 10 run at their defaults: their lessons are shapes and contrasts that the defaults already show,
    # and each more example costs minutes here. 07 adds the 15% job.
    "07_garbage_in": {"CORRUPTED_SHARES": [0.0, 0.15, 0.4]},
    # all 111 held-out requests on the server and in llama.cpp, and the 4-bit file too
    "11_take_it_home": {"N_COMPARE": 0, "QUANTS": ["f16", "q8_0", "q4_k_m"]},
    # every validation request but the 8 whose reward the job reports, and all 111 held-out requests
    "12_reinforcement": {"N_PROMPTS": 66, "N_TEST": 0},
}


class ReportError(RuntimeError):
    """A report could not be made; the message says why and what to do."""


def notebook_parameters(name: str) -> dict[str, Any]:
    """The names and default values of a notebook's ``parameters`` cell, as papermill reads them."""
    import papermill

    found = papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))
    return {key: ast.literal_eval(value["default"]) for key, value in found.items()}


def parse_value(text: str) -> Any:
    """``-p N 3`` gives 3, ``-p X "auto"`` or ``-p X auto`` gives "auto" (like papermill's -p)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def resolve(name: str) -> str:
    stem = Path(name).stem
    if stem not in notebook_names():
        raise ReportError(f"No notebook {name!r}. Notebooks: {', '.join(notebook_names())}.")
    return stem


def make_report(name: str, parameters: dict[str, Any] | None = None, *, out_dir: Path = REPORTS_DIR,
                include_input: bool = True) -> Path:
    """Execute one notebook with ``parameters`` into ``out_dir``; return the HTML report's path."""
    import papermill
    from nbconvert import HTMLExporter

    name = resolve(name)
    parameters = dict(parameters or {})
    known = notebook_parameters(name)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ReportError(f"{name} has no parameter {', '.join(unknown)}. Its parameters: {', '.join(known)}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{name}.ipynb"
    try:
        papermill.execute_notebook(NOTEBOOK_DIR / f"{name}.ipynb", executed, parameters=parameters, cwd=str(NOTEBOOK_DIR),
                                   kernel_name="python3", progress_bar=False, report_mode=not include_input)
    except papermill.PapermillExecutionError as exc:
        raise ReportError(f"{name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}. "
                          f"The partly executed notebook is {executed}.") from None
    html, _ = HTMLExporter(template_name="lab", exclude_input=not include_input).from_notebook_node(nbformat.read(executed, as_version=4))
    target = out_dir / f"{name}.html"
    target.write_text(html, encoding="utf-8")
    _refuse_secrets(executed, target)
    return target


def _refuse_secrets(*paths: Path) -> None:
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        return
    for path in paths:
        if key in path.read_text(encoding="utf-8", errors="replace"):
            for leaked in paths:
                leaked.unlink(missing_ok=True)
            raise ReportError(f"{path.name} contained the value of OPENAI_API_KEY; the report was deleted. "
                              "Remove whatever prints the key and run the report again.")


#: Notebooks whose tables read what later notebooks measured (01 prices each approach per correct answer with
#: 04's and 05's accuracies), so ``make_all`` runs them after the rest, on this run's numbers.
READS_LATER_METRICS = ("01_when_to_fine_tune",)


def run_order(names: list[str]) -> list[str]:
    """The notebooks in course order, those that read later notebooks' metrics moved to the end."""
    return [n for n in names if n not in READS_LATER_METRICS] + [n for n in names if n in READS_LATER_METRICS]


def make_all(out_dir: Path = REPORTS_DIR, include_input: bool = True) -> list[Path]:
    """Every notebook as a report with the course-sized parameters (returned in course order)."""
    paths = {name: make_report(name, REPORT_PARAMETERS.get(name), out_dir=out_dir, include_input=include_input)
             for name in run_order(notebook_names())}
    return [paths[name] for name in notebook_names()]
