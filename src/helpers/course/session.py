"""One call sets a notebook up: ``course = helpers.course.setup("02_data_prep")``.

It checks the environment, picks the backend (local by default), prints a one-line banner, and gives the
notebook a place to record the numbers it computes (``course.record(accuracy=...)``), which tests and
reports read back from ``<metrics dir>/<notebook>.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from helpers.paths import DATA_DIR, shown
from helpers.settings import settings


def metrics_dir() -> Path:
    return settings().metrics_dir


def recorded_metrics(notebook: str) -> dict[str, Any]:
    """The numbers another notebook recorded in its last run here (empty if it has not run)."""
    path = metrics_dir() / f"{notebook}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class Course:
    notebook: str
    backend: str
    data_dir: Path = DATA_DIR
    recorded: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)  # when setup() ran: each record() notes the time since

    @cached_property
    def client(self):
        """An ``openai.OpenAI`` client for the chosen backend (the local server starts on first use)."""
        from helpers.course.backend import client

        return client(self.backend)

    @property
    def metrics_path(self) -> Path:
        return metrics_dir() / f"{self.notebook}.json"

    def record(self, **values: Any) -> None:
        """Keep numbers the notebook computed, for tests and reports (JSON-serialisable values), and ``elapsed_s``, the
        seconds since the notebook's setup (after its last record, about the notebook's run: its time line is checked
        against it)."""
        self.recorded.update(values, elapsed_s=round(time.monotonic() - self.started, 1))
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_plain(self.recorded), indent=2, allow_nan=False))
        tmp.replace(self.metrics_path)

    def findings(self, topic: str, lines: list[str]) -> None:
        """Show sentences computed from this notebook's numbers as a list; record them as ``findings[topic]``."""
        from IPython.display import Markdown, display

        self.record(findings={**self.recorded.get("findings", {}), topic: list(lines)})
        display(Markdown("\n".join(f"- {line}" for line in lines)))


def _plain(value: Any) -> Any:
    """JSON-safe values: NaN and missing numbers become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def setup(notebook: str, backend: str | None = None) -> Course:
    """Set a notebook up; prints which backend it uses. Never prints or stores an API key."""
    import matplotlib

    from helpers.course.backend import chosen_backend
    from helpers.data.tokens import ensure_offline_encodings

    ensure_offline_encodings()
    matplotlib.rcParams.update({"figure.figsize": (7, 3.5), "figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False})
    import pandas as pd

    pd.set_option("display.max_colwidth", 120)
    course = Course(notebook, chosen_backend(backend))
    course.record(notebook=notebook, backend=course.backend)
    from helpers.course.backend import shared_server_url

    shared = shared_server_url()
    server = f"workshop server {shared}" if shared else "local server"
    where = f"{server} (SmolLM2-135M stands in for OpenAI models{_brought_models()}; $0)" if course.backend == "local" else "OpenAI (billed to your key)"
    print(f"{notebook}: backend = {where}; data = {shown(DATA_DIR)}")
    return course


def _brought_models() -> str:
    """", and team-model answers as itself" for the models the ``WORKBOOK_MODELS`` file brings ("" when none)."""
    from helpers.pricing import catalogue

    brought = [name for name in catalogue.open_models() if name not in catalogue.base_models()]
    if not brought:
        return ""
    return f", and {', '.join(brought)} answer{'s' if len(brought) == 1 else ''} as {'itself' if len(brought) == 1 else 'themselves'}"


def environment_report(course: Course):
    """What this notebook runs on, as a table: versions, device, offline tokenizer, model weights, backend."""
    import importlib.metadata as metadata
    import platform

    import pandas as pd
    import tiktoken
    import torch

    from helpers.pricing import catalogue

    base = catalogue.default_local_base()
    rows = [
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} ({'GPU: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, {torch.get_num_threads()} threads)"),
        ("transformers / peft", f"{metadata.version('transformers')} / {metadata.version('peft')}"),
        ("openai client", metadata.version("openai")),
        ("tokenizer offline", f"{tiktoken.encoding_for_model('gpt-4.1-mini').name} for gpt-4.1-mini"),
        ("local base model", f"{base.name}: {base.source}"),
        ("backend", course.backend),
    ]
    if course.backend == "local":
        from helpers.course.backend import local_server, shared_server_url

        if shared_server_url():
            rows.append(("workshop server", f"{course.client.base_url} (your key is read from WORKBOOK_API_KEY)"))
        else:
            server = local_server()
            rows.append(("local server", f"{server.api_url} (data in {shown(server.data_dir)}, log {server.log_file.name})"))
    return pd.DataFrame(rows, columns=["check", "value"]).set_index("check")
