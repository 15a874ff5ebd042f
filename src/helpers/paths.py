"""Where the workbook's files live: the repository, the shipped data, the user's cache."""
from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the package is installed editable from ``src/helpers``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Shipped course data and the dated tables (prices, model catalogue).
DATA_DIR = Path(os.environ.get("WORKBOOK_DATA_DIR", REPO_ROOT / "data"))


def user_cache_dir() -> Path:
    """The per-user cache folder for the workbook (``$XDG_CACHE_HOME`` respected)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fine-tuning-workbook"
