"""Every ``WORKBOOK_*`` environment variable in one place, read with pydantic-settings.

``settings()`` reads the environment each time it is called (a test or a notebook may change a variable); an empty
value counts as unset. The checks that need a clear, specific message (a port, the idle time, the precision, the
backend) stay with the code that uses the value, which names the variable.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository root (the package is installed editable from ``src/helpers``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The port the local server listens on unless ``WORKBOOK_PORT`` says otherwise.
DEFAULT_PORT = 8321
#: Minutes a server that the notebooks started waits, with nothing to do, before it stops itself.
DEFAULT_IDLE_MINUTES = 30
#: The folder (under the repository) where the local server, the metrics and the exports live by default.
WORKBOOK_DIR = REPO_ROOT / ".workbook"


class Settings(BaseSettings):
    """The workbook's settings, each from ``WORKBOOK_<NAME>`` (for example ``WORKBOOK_PORT=8400``)."""

    model_config = SettingsConfigDict(env_prefix="WORKBOOK_", env_ignore_empty=True, frozen=True, extra="ignore")

    #: ``local`` (default) or ``openai``: which API the notebooks talk to.
    backend: str = "local"
    #: A workshop server's address (``http://10.0.0.5:8321``); unset, the notebooks use (or start) their own.
    server_url: str = ""
    #: The key a participant got from the facilitator, for ``server_url``.
    api_key: SecretStr = SecretStr("")
    #: The key the notebooks use on this machine's server (default: a random key kept in the user's cache).
    local_key: SecretStr = SecretStr("")
    #: The local server's port.
    port: int = DEFAULT_PORT
    #: The local server's files, jobs and models.
    server_dir: Path = WORKBOOK_DIR / "server"
    #: Where each notebook records the numbers it computed.
    metrics_dir: Path = WORKBOOK_DIR / "metrics"
    #: The shipped course data and dated tables.
    data_dir: Path = REPO_ROOT / "data"
    #: Minutes a server that the notebooks started waits idle before it stops (checked by the backend).
    idle_minutes: str = str(DEFAULT_IDLE_MINUTES)
    #: ``auto``, ``bf16`` or ``fp32`` for the local model (checked where the model loads).
    precision: str = "auto"
    #: Where the local base model's safetensors copy is kept (default: the user's cache).
    model_cache: Path | None = None
    #: ``auto`` (a CUDA GPU, else Apple's MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``: where the local
    #: server's models run (checked where the model loads).
    device: str = "auto"
    #: A file of models the local server brings besides the shipped one, ``NAME=SOURCE`` per line (as ``workbook serve
    #: --models FILE``).
    models: Path | None = None
    #: vLLM's own environment, which ``make vllm`` makes (default: the user's cache; one per machine).
    vllm_env: Path | None = None
    #: The key of a vLLM already running (``workbook serve --engine vllm --vllm-url URL``), if it was started with one.
    vllm_key: SecretStr = SecretStr("")
    #: On a GPU, the share of its memory vLLM takes (training, in the server's process, has the rest).
    vllm_gpu_memory: float = 0.5
    #: The Chromium the browser test drives.
    chromium: Path = Path("/usr/bin/chromium")
    #: How long the load test (tests/test_faults.py) keeps 20 clients busy, in seconds (the job it trains beside them has 20 steps).
    load_seconds: float = 30.0


def settings() -> Settings:
    """The settings as the environment gives them now."""
    return Settings()
