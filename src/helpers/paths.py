"""Where the workbook's files live: the repository, the shipped data, the user's cache."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from helpers.settings import REPO_ROOT, settings

__all__ = ["DATA_DIR", "FIRST_BUILDS_LOG", "NOTEBOOK_DIR", "REPO_ROOT", "notebook_names", "shown", "user_cache_dir"]

#: Shipped course data and the dated tables (prices, model catalogue): ``WORKBOOK_DATA_DIR``.
DATA_DIR = settings().data_dir
#: The course notebooks: each ``NN_name.ipynb`` paired (jupytext) with its text source ``NN_name.py``.
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: The one-time builds of this environment's set-up (llama.cpp from source, vLLM's environment), a line each with its
#: date and duration: written by ``scripts/first_builds.py``, printed by the test run's summary.
FIRST_BUILDS_LOG = Path(sys.prefix) / "first-builds.log"


def notebook_names() -> list[str]:
    """The course notebooks in reading order (``00_start_here``, ``01_when_to_fine_tune``, ...)."""
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def shown(path: str | Path) -> str:
    """A path as a notebook shows it: relative to the repository when inside it, ``~/...`` under the home folder,
    so executed notebooks and reports do not carry one machine's folders."""
    path = Path(path)
    for root, label in ((REPO_ROOT, ""), (Path.home(), "~/")):
        try:
            relative = path.resolve().relative_to(root.resolve())
        except ValueError:
            continue
        return f"{label}{relative.as_posix()}" if str(relative) != "." else (label.rstrip("/") or ".")
    return str(path)


def user_cache_dir() -> Path:
    """The per-user cache folder for the workbook (``$XDG_CACHE_HOME`` respected)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fine-tuning-workbook"
