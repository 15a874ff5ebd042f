"""``workbook check-device``: prove a machine end to end (a GPU above all) as a user would use it: start a server of
its own, train a small job through the OpenAI client, answer held-out requests with the tuned model, and print the
device and dtype the server chose, the job's time, the answers' tokens per second and the peak memory.

It talks to the server only over HTTP (the course never imports the server), like the notebooks."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from helpers.course.sending import send_all
from helpers.data.dataprep import read_jsonl
from helpers.settings import settings


class CheckFailed(RuntimeError):
    """The machine did not pass: the message says at which step and why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(folder: Path, brought: list[str], timeout_s: float, engine: str = "local",
           engine_base: str | None = None) -> tuple[subprocess.Popen, str, Path]:
    port, log_path = _free_port(), folder / "server.log"
    command = [sys.executable, "-m", "helpers.cli", "serve", "--port", str(port), "--data-dir", str(folder / "data"),
               "--engine", engine, *(["--vllm-base", engine_base] if engine == "vllm" and engine_base else [])]
    for spec in brought:
        command += ["--model", spec]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise CheckFailed(f"the server did not start: {said[-1] if said else 'no message'} (log: {log_path})")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url, log_path
        except httpx.HTTPError:
            time.sleep(0.3)
    process.terminate()
    raise CheckFailed(f"the server did not answer within {timeout_s:.0f} s (log: {log_path})")


def run(model: str = "gpt-4.1-mini", brought: list[str] | None = None, *, examples: int = 32, epochs: int = 1,
        requests: int = 16, max_tokens: int = 32, engine: str = "local", say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``examples`` course examples for ``epochs`` on ``model`` (the shipped model by default, or one of
    ``brought``: ``NAME=SOURCE``), answer ``requests`` held-out requests at once (through ``engine``: ``local`` or
    ``vllm``), and report. Raises CheckFailed."""
    from openai import APIError, OpenAI

    data = settings().data_dir / "billing"
    folder = Path(tempfile.mkdtemp(prefix="workbook-check-"))  # kept when the check fails: its server.log tells more
    started = time.perf_counter()
    process, url, log_path = _start(folder, list(brought or []), timeout_s=900, engine=engine, engine_base=model)
    try:
        say(f"server: started in {time.perf_counter() - started:.1f} s")
        client = OpenAI(base_url=f"{url}/v1", api_key="device-check", max_retries=0, timeout=600)
        train = folder / "train.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(data / "train.jsonl")[:examples]), encoding="utf-8")
        file = client.files.create(file=train.open("rb"), purpose="fine-tune")
        began = time.perf_counter()
        job = client.fine_tuning.jobs.create(training_file=file.id, model=model, seed=0, hyperparameters={"n_epochs": epochs})
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        job_s = time.perf_counter() - began
        if job.status != "succeeded":
            raise CheckFailed(f"the job {job.status}: {job.error.message if job.error else 'no error given'} (log: {log_path})")
        say(f"training: {examples} examples x {epochs} epoch(s) on {model}: {job_s:.1f} s, {job.trained_tokens:,} trained tokens")
        held_out = [r["messages"][:-1] for r in read_jsonl(data / "test.jsonl")[:requests]]
        asked = time.perf_counter()
        answers = send_all(lambda messages: client.chat.completions.create(
            model=job.fine_tuned_model, messages=messages, max_tokens=max_tokens), held_out, len(held_out))
        answer_s = time.perf_counter() - asked
        tokens = sum(a.usage.completion_tokens for a in answers if a.usage)
        say(f"answers: {len(answers)} held-out requests at once in {answer_s:.1f} s, {tokens} tokens, "
            f"{tokens / answer_s:.1f} tokens/s; the first: {answers[0].choices[0].message.content!r}")
        health = httpx.get(f"{url}/health", timeout=10).json()
    except APIError as exc:  # the server refused a request (an unknown --base, say): its message says why
        said = exc.body.get("message", exc.message) if isinstance(exc.body, dict) else exc.message
        raise CheckFailed(f"the server answered {getattr(exc, 'status_code', '')} {said} (log: {log_path})") from None
    finally:
        process.terminate()
        process.wait(timeout=60)
    shutil.rmtree(folder, ignore_errors=True)
    loaded = health["models"][0] if health["models"] else {}
    memory = health["memory"]
    say(f"device: {loaded.get('device')}, dtype {loaded.get('dtype')}; peak memory: {memory['peak_resident_mb']:.0f} MiB resident"
        + (f", {memory['device_peak_mb']:.0f} MiB on the device" if memory.get("device_peak_mb") is not None else ""))
    say(f"engine: {health['inference'].get('engine', engine)}" + (f" at {health['inference']['url']}" if engine == "vllm" else ""))
    return {"engine": health["inference"].get("engine", engine), "job_seconds": job_s, "answer_seconds": answer_s, "completion_tokens": tokens, "tokens_per_second": tokens / answer_s,
            "device": loaded.get("device"), "dtype": loaded.get("dtype"), "memory": memory,
            "first_answer": answers[0].choices[0].message.content}
