"""Which API the notebooks talk to, and a ready ``openai`` client for it.

* ``local`` (default): our server on this machine, started on demand and shared: a notebook, a second
  notebook and a restarted kernel all find the same server (its address is fixed, its state on disk).
  In a workshop, ``WORKBOOK_SERVER_URL`` (the facilitator's server, e.g. ``http://10.0.0.5:8321``) and
  ``WORKBOOK_API_KEY`` (your key) point the same notebooks at one shared server instead.
* ``openai``: OpenAI itself; needs ``OPENAI_API_KEY`` in the environment (never typed into a notebook).

Choose with ``WORKBOOK_BACKEND=openai`` or ``helpers.course.backend.client("openai")``.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers.paths import user_cache_dir
from helpers.settings import DEFAULT_IDLE_MINUTES, settings

DEFAULT_HOST = "127.0.0.1"
LOCAL_KEY_FILE = "local-api-key"  # in the user's cache folder, readable by its owner only
BACKENDS = ("local", "openai")


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot be used; the message says what to do."""


@dataclass(frozen=True)
class LocalServer:
    url: str
    data_dir: Path
    log_file: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"


def local_key() -> str:
    """The key the notebooks use on the local server: ``WORKBOOK_LOCAL_KEY`` if set, else a random key made once per
    user and kept in the cache folder with owner-only permissions (a restarted kernel finds the same one). The local
    server takes any key, and each key is its own workspace, so a web page that reaches the server cannot guess
    the key that holds this user's files."""
    chosen = settings().local_key.get_secret_value().strip()
    if chosen:
        return chosen
    path = user_cache_dir() / LOCAL_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even for a moment
    except FileExistsError:  # made before (or by another kernel just now: wait for its key to be written)
        for _ in range(50):
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.1)
        raise BackendUnavailable(f"The local key file {path} is empty. Delete it; the next client makes a new key.") from None
    key = f"wb-local-{secrets.token_urlsafe(24)}"
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def default_data_dir() -> Path:
    return settings().server_dir


def _healthy(url: str) -> dict | None:
    try:
        response = httpx.get(f"{url}/health", timeout=2.0)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def idle_minutes() -> float:
    """How long a server started for the notebooks waits, with nothing to do, before it stops itself
    (``WORKBOOK_IDLE_MINUTES``, default 30)."""
    raw = settings().idle_minutes.strip() or str(DEFAULT_IDLE_MINUTES)
    try:
        minutes = float(raw)
    except ValueError:
        minutes = 0.0
    if not minutes > 0:
        raise BackendUnavailable(f"WORKBOOK_IDLE_MINUTES must be a number of minutes above 0, got {raw!r}.")
    return minutes


def local_port(port: int | None = None) -> int:
    return port or settings().port


def local_server(port: int | None = None, data_dir: Path | None = None, *, start: bool = True, timeout_s: float = 120.0,
                 training_closed: bool = False, models: Sequence[str] = ()) -> LocalServer:
    """The local server at ``port``: found if it runs, else started in the background and waited for. A server
    started here stops itself after ``idle_minutes()`` with no request and no job; `workbook stop` stops it at once.
    ``training_closed``: a server that refuses new fine-tuning jobs as OpenAI does after its wind-down. ``models``:
    ``NAME=SOURCE`` of the models it brings (``workbook serve --model``), instead of those the ``WORKBOOK_MODELS`` setting
    names (a server started for one demonstration brings just what it is given)."""
    port = local_port(port)
    data_dir = Path(data_dir or default_data_dir()).resolve()
    url = f"http://{DEFAULT_HOST}:{port}"
    server = LocalServer(url, data_dir, data_dir / "server.log")
    health = _healthy(url)
    if health is not None:
        if Path(health.get("data_dir", "")).resolve() != data_dir:
            raise BackendUnavailable(f"Port {port} is used by a workbook server with data in {health.get('data_dir')}, "
                                     f"not {data_dir}. Stop it, or set WORKBOOK_PORT to another port.")
        if bool(health.get("training_closed")) != training_closed:
            raise BackendUnavailable(f"The workbook server at port {port} {'trains' if training_closed else 'refuses to train'}; "
                                     f"stop it (`workbook stop --port {port}`) and ask again.")
        return server
    if not start:
        raise BackendUnavailable(f"No local server at {url}. Start one with `workbook serve`.")
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(server.log_file, "ab") as log:
        started = log.tell()
        process = subprocess.Popen([sys.executable, "-m", "helpers.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
                                    "--idle-timeout", str(idle_minutes()), *(["--training-closed"] if training_closed else []),
                                    *[flag for spec in models for flag in ("--model", spec)]],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={k: v for k, v in os.environ.items() if not (models and k == "WORKBOOK_MODELS")})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _healthy(url) is not None:
            return server
        if process.poll() is not None:  # it refused to start (a bad WORKBOOK_MODELS line, a device it cannot use): say why
            with open(server.log_file, "rb") as log:
                log.seek(started)
                said = log.read().decode("utf-8", "replace").strip().splitlines()
            raise BackendUnavailable(f"The local server did not start: {said[-1] if said else 'no message'} (log: {server.log_file}).")
        time.sleep(0.3)
    raise BackendUnavailable(f"The local server did not start within {timeout_s:.0f} s; see {server.log_file}.")


def stop_local_server(port: int | None = None, timeout_s: float = 30.0) -> str:
    """Stop the workbook server on this machine's ``port`` (SIGTERM to the pid its /health reports); says what happened."""
    url = f"http://{DEFAULT_HOST}:{local_port(port)}"
    health = _healthy(url)
    if health is None:
        return f"no workbook server runs at {url}."
    try:
        os.kill(int(health["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        return f"the server at {url} (pid {health['pid']}) had already stopped."
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _healthy(url) is not None:
        time.sleep(0.2)
    if _healthy(url) is not None:
        raise BackendUnavailable(f"The server at {url} (pid {health['pid']}) did not stop within {timeout_s:.0f} s.")
    return f"stopped the server at {url} (pid {health['pid']}, data in {health.get('data_dir')})."


def chosen_backend(backend: str | None = None) -> str:
    backend = (backend or settings().backend).lower()
    if backend not in BACKENDS:
        raise BackendUnavailable(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    return backend


def shared_server_url() -> str | None:
    """The workshop server's address from ``WORKBOOK_SERVER_URL``, or None to use (or start) our own."""
    url = settings().server_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    return url or None


def _shared_client(url: str, **kwargs):
    from openai import AuthenticationError, OpenAI

    key = settings().api_key.get_secret_value().strip()
    if not key:
        raise BackendUnavailable(f"WORKBOOK_SERVER_URL points at the workshop server {url}, but WORKBOOK_API_KEY is not set. "
                                 "Set it to the key your facilitator gave you (in the shell before starting Jupyter).")
    if _healthy(url) is None:
        raise BackendUnavailable(f"No workbook server answers at {url} (WORKBOOK_SERVER_URL). Check the address with your "
                                 "facilitator, or unset WORKBOOK_SERVER_URL to use a server on this machine.")
    shared = OpenAI(base_url=f"{url}/v1", api_key=key, **kwargs)
    try:
        shared.models.list()
    except AuthenticationError:
        raise BackendUnavailable(f"The workshop server at {url} does not accept your WORKBOOK_API_KEY. Check it with your "
                                 "facilitator (keys are case-sensitive).") from None
    return shared


def client(backend: str | None = None, **kwargs):
    """An ``openai.OpenAI`` client for the chosen backend (local by default)."""
    from openai import OpenAI

    backend = chosen_backend(backend)
    if backend == "openai":
        if not os.environ.get("OPENAI_API_KEY"):
            raise BackendUnavailable("The OpenAI backend needs OPENAI_API_KEY in the environment (set it before starting "
                                     "Jupyter; never paste a key into a notebook). Or use the local backend.")
        return OpenAI(**kwargs)
    url = shared_server_url()
    if url:
        return _shared_client(url, **kwargs)
    server = local_server()
    return OpenAI(base_url=server.api_url, api_key=local_key(), **kwargs)
