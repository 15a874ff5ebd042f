"""Write notebooks/*.ipynb from their text sources notebooks/*.py (jupytext py:percent, the one source).

    python scripts/build_notebooks.py            # inputs from the .py files; outputs of unchanged cells kept
    python scripts/build_notebooks.py --execute  # then run each notebook top to bottom at its defaults (make notebooks)
    python scripts/build_notebooks.py --execute 01_when_to_fine_tune   # only the notebooks named

With ``--execute`` every cell's output is stored, so a reader on GitHub sees a full run; nbval compares the
outputs of the cells tagged ``nbval-check-output``. The run uses a scratch server folder and port, and stops the
server notebook 00 started. tests/test_notebooks.py checks that each .ipynb's inputs equal its .py, that the
stored run went top to bottom with no error, and that no output names a folder of this machine.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs

from helpers.paths import NOTEBOOK_DIR, REPO_ROOT

KEEP_METADATA = ("kernelspec", "language_info", "jupytext")


def synced(text_source: Path) -> nbformat.NotebookNode:
    """The notebook of ``text_source``, with the stored outputs of cells whose source did not change."""
    notebook = jupytext.read(text_source)
    paired = text_source.with_suffix(".ipynb")
    if paired.exists():
        notebook = combine_inputs_with_outputs(notebook, nbformat.read(paired, as_version=4), fmt="py:percent")
    notebook.metadata.setdefault("language_info", {"name": "python"})
    return tidy(notebook, text_source.stem)


def tidy(notebook: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """Stable cell ids (a rebuild gives the same file) and no run-specific metadata (papermill's timings, paths)."""
    notebook.metadata = nbformat.from_dict({k: v for k, v in notebook.metadata.items() if k in KEEP_METADATA})
    for i, cell in enumerate(notebook.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items() if k == "tags"})
    notebook.nbformat, notebook.nbformat_minor = 4, 5
    return notebook


def execute(path: Path) -> nbformat.NotebookNode:
    import papermill

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        papermill.execute_notebook(path, out, cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False)
        executed = nbformat.read(out, as_version=4)
        print(slowest_cells(executed, path.stem), flush=True)
        return tidy(executed, path.stem)


def slowest_cells(notebook: nbformat.NotebookNode, name: str, n: int = 3) -> str:
    """One line: the notebook's run time and its ``n`` slowest cells (papermill's per-cell durations, which ``tidy``
    then drops from the saved file): where a notebook's minutes go, for keeping the course within its time."""
    timed = [(cell.metadata.get("papermill", {}).get("duration") or 0.0, i) for i, cell in enumerate(notebook.cells)]
    slow = ", ".join(f"cell {i} {seconds:.0f} s" for seconds, i in sorted(timed, reverse=True)[:n])
    return f"{name}: {sum(seconds for seconds, _ in timed):.0f} s; slowest: {slow}"


def main(argv: list[str]) -> int:
    run = "--execute" in argv
    names = [a for a in argv if not a.startswith("--")]
    sources = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
    unknown = sorted(set(names) - {s.stem for s in sources})
    if unknown:
        print(f"No notebook {', '.join(unknown)}; notebooks: {', '.join(s.stem for s in sources)}", file=sys.stderr)
        return 2
    if run:  # keep the user's own server, metrics and data out of it
        (REPO_ROOT / ".workbook").mkdir(exist_ok=True)
        scratch = tempfile.mkdtemp(prefix="build-notebooks-", dir=REPO_ROOT / ".workbook")  # shown as .workbook/...
        os.environ.setdefault("WORKBOOK_METRICS_DIR", os.path.join(scratch, "metrics"))
        os.environ.setdefault("WORKBOOK_SERVER_DIR", os.path.join(scratch, "server"))
        os.environ.setdefault("WORKBOOK_PORT", "8329")
    try:
        for source in sources:
            path = source.with_suffix(".ipynb")
            nbformat.write(synced(source), path)
            if run and (not names or source.stem in names):
                nbformat.write(execute(path), path)
            print(path)
    finally:
        if run:  # stop the server notebook 00 started
            from helpers.course.backend import stop_local_server

            stop_local_server()  # the scratch server, at WORKBOOK_PORT
            time.sleep(2)  # let it close its database before the scratch folder goes
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
