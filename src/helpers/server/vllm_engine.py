"""vLLM as the server's inference engine (``workbook serve --engine vllm``): the engine built to serve many LoRA models.

Our server stays in front: keys, workspaces, fairness, limits, the prompt (rendered by the base model's own chat
template, as training saw it), tool calls and errors are ours; vLLM generates. It listens on loopback only and answers
only our server (a random key of ours, given to it by its environment, never on its command line). Prompts go to
vLLM's ``/v1/completions`` as token ids and come back as token ids (``return_token_ids``), so the text and the finish
reason of an answer are made by ``Engine.finish`` as the in-process engine makes them; grammars (structured output,
tool calls) go as llguidance Lark text to vLLM's guidance backend, the library the in-process engine uses.

A fine-tuned model's adapter (or a checkpoint's) is loaded into vLLM the first time it is asked for
(``/v1/load_lora_adapter``; its name carries the owner's workspace folder), unloaded when its model is deleted, and
loaded again when vLLM no longer knows it (a vLLM that restarted). vLLM runs one base model: a model of another base
gets a 404 that says how to serve it.

vLLM lives in an environment of its own (it pins its own transformers): ``make vllm`` makes it
(``scripts/install_vllm.py``), at ``vllm_python()``.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from helpers.paths import user_cache_dir
from helpers.pricing import catalogue
from helpers.server import localmodels
from helpers.server.inference import Engine, Generation, Sampling, Target, put_until_closed
from helpers.server.training import TrainSettings
from helpers.settings import settings

log = logging.getLogger("workbook.vllm")

MAX_LORAS = 8  # adapters batched together in one step (vLLM's --max-loras) ...
MAX_CPU_LORAS = 32  # ... and kept loaded beside them (--max-cpu-loras)
IN_FLIGHT = 64  # requests sent to vLLM at once (it batches them continuously)
START_TIMEOUT_S = 600.0  # measured here: it answers 30-38 s after starting on 2 cores (a first start compiles more)


class VllmUnavailable(RuntimeError):
    """vLLM cannot be used: not installed, does not start, or does not run the base model asked for."""


def vllm_env_dir() -> Path:
    """Where ``make vllm`` makes vLLM's environment (once per machine: every clone of the course shares it)."""
    return settings().vllm_env or user_cache_dir() / "vllm"


def vllm_python() -> Path:
    return vllm_env_dir() / "bin" / "python"


def lora_name(weights: Path) -> str:
    """The name vLLM knows an adapter by: the owner's workspace folder and the model's folder (``Store.model_dir``),
    so one key's adapter is never another's."""
    return f"{weights.parent.name}-{weights.name}"


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child, before it runs: ``sig`` when the thread that started it ends (Linux's PR_SET_PDEATHSIG; elsewhere
    only the server's shutdown stops vLLM)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


#: Run beside vLLM: when the server dies (even by SIGKILL) this gets SIGTERM and kills vLLM's whole process group, its
#: engine process included (measured: with PR_SET_PDEATHSIG on vLLM's API server alone, its engine process lived on).
WATCHDOG = """
import os, signal, sys
group = int(sys.argv[1])
def end(*_):
    try:
        os.killpg(group, signal.SIGKILL)
    finally:
        os._exit(0)
signal.signal(signal.SIGTERM, end)
if os.getppid() == 1:
    end()
while True:
    signal.pause()
"""


class _Launcher:
    """One thread that lives as long as the server and starts every vLLM process: PR_SET_PDEATHSIG follows the thread
    that started a child, so a child started from a request's thread would die when that thread does."""

    def __init__(self) -> None:
        self._work: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="vllm-launcher", daemon=True).start()

    def _run(self) -> None:
        while True:
            work, done = self._work.get()
            try:
                done.set_result(work())
            except BaseException as exc:
                done.set_exception(exc)

    def popen(self, *args: Any, parent_death_signal: int = signal.SIGKILL, **kwargs: Any) -> subprocess.Popen:
        done: Future = Future()
        self._work.put((partial(subprocess.Popen, *args, preexec_fn=partial(_die_with_parent, parent_death_signal), **kwargs), done))
        return done.result()


_launcher: _Launcher | None = None
_launcher_lock = threading.Lock()


def _launch(*args: Any, **kwargs: Any) -> subprocess.Popen:
    global _launcher
    with _launcher_lock:
        _launcher = _launcher or _Launcher()
    return _launcher.popen(*args, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VllmProcess:
    """vLLM's OpenAI server for one base model, started from its own environment on loopback, stopped with ours."""

    def __init__(self, base: catalogue.LocalBase, log_path: Path) -> None:
        self.base, self.log_path = base, log_path
        self.key = secrets.token_urlsafe(24)
        self.process: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self.url = ""

    def command(self, port: int) -> list[str]:
        device = localmodels.default_device()
        dtype = "bfloat16" if str(localmodels.compute_dtype(device)).endswith("bfloat16") else "float32"
        command = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
                   "--model", str(localmodels.weights_dir(self.base)), "--served-model-name", self.base.name,
                   "--dtype", dtype, "--max-model-len", str(self.base.context_length), "--seed", "0",
                   "--enable-lora", "--max-lora-rank", str(TrainSettings().lora_r), "--max-loras", str(MAX_LORAS),
                   "--max-cpu-loras", str(MAX_CPU_LORAS), "--structured-outputs-config.backend", "guidance",
                   "--disable-uvicorn-access-log"]
        if device.startswith("cuda"):  # training shares the GPU: vLLM takes this share of its memory
            command += ["--gpu-memory-utilization", str(settings().vllm_gpu_memory)]
        return command

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        self._end_group()  # after a crash: what is left of the last one (its engine process may outlive its API server)
        python = vllm_python()
        if not python.exists():
            raise VllmUnavailable(f"vLLM's environment is not made ({python} is missing): run `make vllm` once "
                                  "(about 3 minutes; it installs vLLM beside the course, not in .venv).")
        port = _free_port()
        env = {**os.environ, "VLLM_API_KEY": self.key, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU (ignored on a GPU)
        env.pop("WORKBOOK_API_KEY", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = _launch(self.command(port), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.watchdog = _launch([sys.executable, "-c", WATCHDOG, str(self.process.pid)], parent_death_signal=signal.SIGTERM)
        self.url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise VllmUnavailable(f"vLLM stopped while starting (exit {self.process.returncode}): {self._log_tail()} "
                                      f"(all of it in {self.log_path}).")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    log.warning("vLLM %s answers at %s after %.0f s (log: %s)", self.base.name, self.url,
                                time.monotonic() - started, self.log_path)
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise VllmUnavailable(f"vLLM did not answer within {timeout_s:.0f} s: {self._log_tail()} (log: {self.log_path}).")

    def _log_tail(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        errors = [line for line in lines if "Error" in line or "error" in line]
        return (errors or lines or ["no output"])[-1].strip()[:400]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._end_group()

    def _end_group(self) -> None:
        """Kill whatever is left of vLLM's process group, and its watchdog."""
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.kill()
            self.watchdog.wait()
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()


class VllmEngine(Engine):
    """Answers through a vLLM server that runs ``base`` (started here as ``process``, or already running at ``url``)."""

    name = "vllm"

    def __init__(self, base: catalogue.LocalBase, url: str, key: str = "", process: VllmProcess | None = None) -> None:
        super().__init__()
        self.base, self.url, self.process = base, url.rstrip("/"), process
        self.client = self._new_client(key)
        self._pool = ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="vllm")
        self._loaded: set[str] = set()
        self._loading = threading.Lock()
        self._restarting = threading.Lock()
        self.stats.update(url=self.url, adapters_loaded=0, restarts=0, pid=process.process.pid if process and process.process else None)

    def _new_client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"} if key else {},
                            timeout=httpx.Timeout(600.0, connect=10.0),
                            # idle connections are dropped before vLLM's server closes them (uvicorn: after 5 s)
                            limits=httpx.Limits(max_connections=IN_FLIGHT + 8, keepalive_expiry=2.0))

    @classmethod
    def start(cls, base: catalogue.LocalBase, log_path: Path) -> VllmEngine:
        """Start vLLM for ``base`` and answer through it."""
        process = VllmProcess(base, log_path)
        url = process.start()
        return cls(base, url, process.key, process)

    @classmethod
    def connect(cls, base: catalogue.LocalBase, url: str, key: str = "") -> VllmEngine:
        """Answer through a vLLM already running at ``url``; it must serve ``base`` under its name, with LoRA on."""
        engine = cls(base, url, key)
        try:
            served = [m["id"] for m in engine._checked(engine.client.get("/v1/models")).json()["data"]]
        except (httpx.HTTPError, VllmUnavailable, KeyError, ValueError) as exc:
            raise VllmUnavailable(f"no vLLM answers at {url}: {exc}") from None
        if base.name not in served:
            raise VllmUnavailable(f"the vLLM at {url} serves {', '.join(served) or 'nothing'}, not {base.name}: start it "
                                  f"with --served-model-name {base.name} (and --enable-lora).")
        return engine

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.process is not None:
            self.process.stop()

    def unavailable(self, base: catalogue.LocalBase) -> str | None:
        if base.name == self.base.name:
            return None
        return (f"its base model, {base.name}, is not the one this server's vLLM runs ({self.base.name}). Start a server "
                f"for it: workbook serve --engine vllm --vllm-base {base.name}.")

    # -- requests to vLLM -------------------------------------------------------------------------------------
    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            response.read()
            raise VllmUnavailable(f"vLLM answered {response.status_code}: {response.text[:300]}")
        return response

    def _model(self, target: Target) -> str:
        """The name vLLM serves ``target`` by, its adapter loaded first if vLLM does not have it yet."""
        if target.weights is None:
            return self.base.name
        name = lora_name(target.weights)
        with self._loading:
            if name not in self._loaded:
                response = self.client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(target.weights)})
                if response.status_code >= 400 and "already been loaded" not in response.text:
                    self._checked(response)
                self._loaded.add(name)
                self.stats["adapters_loaded"] = len(self._loaded)
        return name

    def forget(self, weights: Path) -> None:
        name = lora_name(weights)
        with self._loading:
            if name in self._loaded:
                self._loaded.discard(name)
                self.stats["adapters_loaded"] = len(self._loaded)
                try:
                    self.client.post("/v1/unload_lora_adapter", json={"lora_name": name})
                except httpx.HTTPError as exc:  # a vLLM that is down has forgotten it already
                    log.warning("could not unload %s from vLLM: %s", name, exc)

    def _body(self, target: Target, prompt: list[int], sampling: Sampling, stream: bool) -> dict[str, Any]:
        stop_ids = self._with_counting_tokenizer(target.base, lambda chat: sorted(chat.stop_ids))
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": sampling.max_tokens, "n": sampling.n,
                                "temperature": sampling.temperature, "top_p": sampling.top_p, "stop": list(sampling.stop),
                                "stop_token_ids": stop_ids, "return_token_ids": True, "stream": stream}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.grammar is not None:
            body["structured_outputs"] = {"grammar": sampling.grammar}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _send(self, target: Target, body: dict[str, Any], stream: bool) -> httpx.Response:
        """POST ``/v1/completions``. A vLLM this server started that has died is started again; an adapter vLLM no
        longer knows (after such a restart, or one done by hand) is loaded again."""
        for attempt in range(3):
            client = self.client
            try:
                request = client.build_request("POST", "/v1/completions", json={**body, "model": self._model(target)})
                response = client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # vLLM went away (a process of ours is started again), or it closed a kept-alive connection just as
                # this request took it ("Connection reset by peer", seen here once in 40 requests): send it again
                if attempt == 2:
                    raise
                self._restarted(client)
                continue
            if response.status_code == 404 and target.weights is not None and attempt < 2:
                response.close()
                with self._loading:
                    self._loaded.discard(lora_name(target.weights))
                continue
            return self._checked(response)
        raise AssertionError("unreachable")

    def _restarted(self, failed: httpx.Client) -> bool:
        """Whether vLLM was started again after ``failed`` could not reach it: a process of ours that died is (once,
        whichever request finds it first; the others wait, then retry)."""
        with self._restarting:
            if self.client is not failed:
                return True  # another request restarted it meanwhile
            if self.process is None or self.process.process is None:
                return False
            try:  # a vLLM just killed may not be reaped yet when its connections drop
                self.process.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                return False  # alive: it closed a kept-alive connection
            log.warning("vLLM stopped (exit %s): starting it again", self.process.process.returncode if self.process.process else None)
            self.url = self.process.start()
            self.client = self._new_client(self.process.key)
            with self._loading:
                self._loaded.clear()
            self.stats.update(url=self.url, restarts=self.stats["restarts"] + 1, adapters_loaded=0,
                              pid=self.process.process.pid if self.process.process else None)
            return True

    @staticmethod
    def _tokens(choice: dict[str, Any]) -> list[int]:
        """A choice's (or a streamed chunk's) generated tokens, with the stop token vLLM stopped at (it may leave it out
        of ``token_ids``)."""
        tokens = list(choice.get("token_ids") or [])
        stopped_at = choice.get("stop_reason")
        if choice.get("finish_reason") == "stop" and isinstance(stopped_at, int) and (not tokens or tokens[-1] != stopped_at):
            tokens.append(stopped_at)
        return tokens

    # -- the engine ----------------------------------------------------------------------------------------
    def _submit(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling,
                functions: list[dict[str, Any]] | None) -> Future:
        """Sent at once: vLLM batches what is in flight (continuous batching), adapters included."""
        return self._pool.submit(self._complete, target, messages, sampling, functions)

    def _complete(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling,
                  functions: list[dict[str, Any]] | None) -> Generation:
        prompt = self.prompt_ids(target.base, messages, functions)
        answer = self._send(target, self._body(target, prompt, sampling, stream=False), stream=False).json()
        self._count(1)
        texts, reasons, used = [], [], 0
        for choice in sorted(answer["choices"], key=lambda c: c["index"]):
            text, reason, tokens = self.finish(target.base, self._tokens(choice), sampling)
            if choice.get("finish_reason") == "stop":  # a stop string vLLM stopped at (its tokens may end before it)
                reason = "stop"
            texts.append(text)
            reasons.append(reason)
            used += tokens
        return Generation(texts, reasons, len(prompt), used)

    def _produce(self, target: Target, messages: list[dict[str, Any]], sampling: Sampling, out: queue.Queue,
                 closed: threading.Event, functions: list[dict[str, Any]] | None) -> None:
        """vLLM's stream of token ids, token by token; closing the response (the client went away) ends its request."""
        put = partial(put_until_closed, out, closed)
        try:
            prompt = self.prompt_ids(target.base, messages, functions)
            if not put(("prompt", len(prompt))):
                return
            self._count(1)
            response = self._send(target, self._body(target, prompt, sampling, stream=True), stream=True)
            try:
                for line in response.iter_lines():
                    if closed.is_set():
                        return
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    for choice in json.loads(line[6:]).get("choices") or []:
                        for token in self._tokens(choice):
                            if not put(("token", token)):
                                return
            finally:
                response.close()  # a client that went away: vLLM aborts the request
            put(("end", None))
        except BaseException as exc:  # raised in the reader's thread
            put(("error", exc))
