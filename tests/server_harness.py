"""Start the real server in a subprocess and check responses against OpenAI's OpenAPI contract."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from jsonschema import Draft202012Validator
from openai import OpenAI
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

CONTRACT = Path(__file__).resolve().parent / "contracts" / "openai-finetuning-subset.openapi.json"


def _draft4_exclusives_to_2020(node: object) -> object:
    """OpenAI's 3.1 spec still writes a few bounds in draft-4 form (``"minimum": 0, "exclusiveMinimum":
    true``, meaning > 0). JSON Schema 2020-12 reads ``true`` there as the number 1, so 1.0 would fail.
    Rewrite them to the 2020-12 form with the same meaning (``"exclusiveMinimum": 0``)."""
    if isinstance(node, dict):
        node = {k: _draft4_exclusives_to_2020(v) for k, v in node.items()}
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(node.get(exclusive), bool):
                if node.pop(exclusive) and bound in node:
                    node[exclusive] = node.pop(bound)
        return node
    if isinstance(node, list):
        return [_draft4_exclusives_to_2020(v) for v in node]
    return node


_SPEC = _draft4_exclusives_to_2020(json.loads(CONTRACT.read_text()))
_REGISTRY = Registry().with_resource("urn:openai", Resource.from_contents(_SPEC, default_specification=DRAFT202012))


def assert_contract(schema: str, body: object) -> None:
    """Fail with the first difference when ``body`` does not match ``components.schemas[schema]``."""
    validator = Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{schema}"}, registry=_REGISTRY)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{schema}: {errors[0].message} at {list(errors[0].path)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``workbook serve`` on a free loopback port with its own data folder."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> ServerProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **self.env}
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "helpers.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; log: {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for a failing test's message."""
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def client(self, key: str = "key-alice") -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, _strict_response_validation=True, max_retries=0, timeout=300)

    def http(self, method: str, path: str, key: str | None = "key-alice", **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, f"{self.url}/v1{path}", headers=headers, timeout=300, **kwargs)


def wait_for_job(client: OpenAI, job_id: str, timeout_s: float = 600.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s (last status {job.status})")
