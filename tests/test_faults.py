"""Faults a workshop meets: the server killed mid-job, a kernel restarted mid-wait, 20 clients at once while a
job trains, hostile input, a schema-driven fuzz run. Real server processes, the official client, a real kernel."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import hostile_text
import httpx
import openai
import pytest
from conftest import DATA, REPO, head_lines
from openai.pagination import SyncCursorPage
from openai.types import FileDeleted, FileObject
from openai.types.chat import ChatCompletion
from server_harness import CONTRACT, ServerProcess, free_port, wait_for_job

from helpers.course.backend import stop_local_server
from helpers.openai_models import ready
from helpers.settings import settings

TRAIN = DATA / "billing" / "train.jsonl"
VALID = DATA / "billing" / "validation.jsonl"
#: How long the load test runs; the issue asks for 60 s (override with WORKBOOK_LOAD_SECONDS).
LOAD_SECONDS = settings().load_seconds
LOAD_CLIENTS = 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


# --- kill -9 -----------------------------------------------------------------------------------------

def test_a_job_cancelled_just_before_the_server_dies_stays_cancelled(tmp_path):
    """Cancel answers at once and the worker stops at its next step; a server killed in between used to resume the job
    on restart (seen: cancel, then `workbook stop`). The request is kept with the job."""
    data = tmp_path / "data"
    first = ServerProcess(data).start()
    client = first.client()
    train = client.files.create(file=("train.jsonl", head_lines(TRAIN, 40)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=train.id, model="gpt-4.1-mini", hyperparameters={"n_epochs": 3, "batch_size": 4})
    deadline = time.monotonic() + 300
    while client.fine_tuning.jobs.retrieve(job.id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.fine_tuning.jobs.cancel(job.id).status == "running"  # asked; the worker has not stopped yet
    first.stop(signal.SIGKILL)
    second = ServerProcess(data).start()
    try:
        client = second.client()
        time.sleep(2)  # long enough for a resumed job to start again
        after = client.fine_tuning.jobs.retrieve(job.id)
        assert after.status == "cancelled" and after.fine_tuned_model is None
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert "Fine-tuning job cancelled" in messages and not any("resume" in m for m in messages)
    finally:
        second.stop()


def test_kill_9_mid_training_loses_and_duplicates_nothing(tmp_path):
    data = tmp_path / "data"
    first = ServerProcess(data).start()
    client = first.client()
    uploads = {"train.jsonl": head_lines(TRAIN, 10), "valid.jsonl": head_lines(VALID, 4)}
    files = {name: client.files.create(file=(name, body), purpose="fine-tune") for name, body in uploads.items()}
    job = client.fine_tuning.jobs.create(training_file=files["train.jsonl"].id, validation_file=files["valid.jsonl"].id,
                                         model="gpt-4.1-mini", hyperparameters={"n_epochs": 3, "batch_size": 5})
    deadline = time.monotonic() + 300
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.monotonic() < deadline and client.fine_tuning.jobs.retrieve(job.id).status != "failed"
        time.sleep(0.2)
    checkpoint_step = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    before_events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    stored_files = folder_hashes(data / "files")
    first.stop(signal.SIGKILL)

    second = ServerProcess(data).start()
    try:
        client = second.client()
        started = time.perf_counter()
        listed = client.files.list()
        answered_s = time.perf_counter() - started
        assert answered_s < 5, f"the API took {answered_s:.1f} s to answer after a restart"
        assert {f.id for f in listed.data} >= {f.id for f in files.values()}
        for name, body in uploads.items():  # same bytes, same hash, through the API and on disk
            assert sha256(client.files.content(files[name].id).read()) == sha256(body)
            assert client.files.retrieve(files[name].id).bytes == len(body)
        finished = wait_for_job(client, job.id)
        assert finished.status == "succeeded", finished.error
        assert {k: v for k, v in folder_hashes(data / "files").items() if k in stored_files} == stored_files
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert len({e.id for e in events}) == len(events)
        # everything said before the kill is still there, except step metrics after the checkpoint, which were redone
        kept = {e.id for e in before_events if e.type != "metrics" or e.data["step"] <= checkpoint_step}
        assert kept <= {e.id for e in events}
        steps = sorted(e.data["step"] for e in events if e.type == "metrics")
        assert steps == list(range(1, 7)), steps  # each step reported exactly once
        messages = [e.message for e in events]
        assert sum(m.startswith("New fine-tuned model created") for m in messages) == 1
        assert any("server restarted" in m for m in messages) and any(m.startswith("Resuming from checkpoint") for m in messages)
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [6, 4, 2]
        assert not list(data.rglob("*.tmp")), "a half-written file was left behind"
    finally:
        second.stop()


# --- a kernel restarted mid-wait --------------------------------------------------------------------

def run_cell(kernel, code: str, timeout: float = 300) -> str:
    """Run code in the kernel and return what it printed; fail on an error."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = kernel.execute_interactive(code, timeout=timeout, output_hook=hook)
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)


def test_a_restarted_kernel_finds_the_same_server_and_job(tmp_path):
    from jupyter_client import KernelManager

    port = str(free_port())
    env = {**os.environ, "WORKBOOK_PORT": port, "WORKBOOK_SERVER_DIR": str(tmp_path / "server"),
           "WORKBOOK_METRICS_DIR": str(tmp_path / "metrics"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WORKBOOK_LOCAL_KEY": "key-restart"}
    part = tmp_path / "train.jsonl"  # 20 steps: the job still runs when the restarted kernel asks
    part.write_bytes(head_lines(TRAIN, 80))
    setup = "from helpers.course import finetune, setup\ncourse = setup('03_training')\n"
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, cwd=str(REPO / "notebooks"))
    try:
        kernel = manager.client()
        kernel.start_channels()
        kernel.wait_for_ready(timeout=120)
        printed = run_cell(kernel, setup + f"""
import httpx, json
train = finetune.upload(course.client, {str(part)!r})
job = finetune.start_job(course.client, training_file=train.id, model="gpt-4.1-mini", metadata={{"course": "restart-test"}},
                         hyperparameters={{"n_epochs": 1, "batch_size": 4}})
print(json.dumps({{"job": job.id, "pid": httpx.get("http://127.0.0.1:{port}/health").json()["pid"]}}))
""")
        before = json.loads(printed.strip().splitlines()[-1])
        kernel.execute("job = finetune.follow(course.client, job.id)")  # the wait the restart interrupts
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="key-restart", max_retries=0)
        deadline = time.monotonic() + 300
        while not [e for e in client.fine_tuning.jobs.list_events(before["job"]).data if e.type == "metrics"]:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        manager.restart_kernel(now=True)
        kernel.wait_for_ready(timeout=120)
        printed = run_cell(kernel, setup + f"""
import httpx, json
job = finetune.latest_job(course.client, {{"course": "restart-test"}})
running = job.status
job = finetune.follow(course.client, job.id, show_events=False)
print(json.dumps({{"job": job.id, "was": running, "status": job.status,
                  "pid": httpx.get("http://127.0.0.1:{port}/health").json()["pid"]}}))
""", timeout=600)
        after = json.loads(printed.strip().splitlines()[-1])
        assert after["job"] == before["job"] and after["pid"] == before["pid"]  # same job, same server
        assert after["was"] == "running" and after["status"] == "succeeded"
    finally:
        manager.shutdown_kernel(now=True)
        stop_local_server(port)


# --- load --------------------------------------------------------------------------------------------

def test_20_clients_at_once_while_a_job_trains(tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    try:
        owner = server.client("key-trainer")
        train = owner.files.create(file=("train.jsonl", head_lines(TRAIN, 40)), purpose="fine-tune")
        job = owner.fine_tuning.jobs.create(training_file=train.id, model="gpt-4.1-mini",  # 20 steps: about LOAD_SECONDS
                                            hyperparameters={"n_epochs": 2, "batch_size": 4})
        deadline = time.monotonic() + 300
        while owner.fine_tuning.jobs.retrieve(job.id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        latencies: dict[str, list[float]] = {"list": [], "retrieve": [], "upload": [], "chat": []}
        failures: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + LOAD_SECONDS
        small = head_lines(TRAIN, 3)

        def participant(i: int) -> None:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=f"key-load-{i}", max_retries=0, timeout=120)
            mine = client.files.create(file=(f"p{i}.jsonl", small), purpose="fine-tune").id
            step = 0
            while time.monotonic() < stop_at:
                kind = ("list", "retrieve", "upload", "chat")[(i + step) % 4]
                step += 1
                started = time.perf_counter()
                try:
                    if kind == "list":
                        client.files.list()
                    elif kind == "retrieve":
                        assert client.files.retrieve(mine).bytes == len(small)
                    elif kind == "upload":
                        client.files.delete(client.files.create(file=(f"u{i}.jsonl", small), purpose="fine-tune").id)
                    else:
                        reply = client.chat.completions.create(model="gpt-4.1-nano", max_tokens=4,
                                                               messages=[{"role": "user", "content": f"Say {i}."}])
                        assert reply.usage.completion_tokens >= 1
                except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                    with lock:
                        failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    latencies[kind].append(time.perf_counter() - started)

        # the answers the participants parse, built before they do: their first build in many threads is not safe
        ready(ChatCompletion, FileObject, FileDeleted, SyncCursorPage[FileObject])
        threads = [threading.Thread(target=participant, args=(i,)) for i in range(LOAD_CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=LOAD_SECONDS + 300)
        still_training = owner.fine_tuning.jobs.retrieve(job.id).status
        finished = wait_for_job(owner, job.id)
        every = sorted(x for values in latencies.values() for x in values)
        summary = {kind: {"requests": len(v), "p50_s": round(statistics.median(v), 3),
                          "p95_s": round(statistics.quantiles(v, n=20)[-1], 3)} for kind, v in latencies.items() if len(v) >= 2}
        summary["all"] = {"requests": len(every), "p95_s": round(statistics.quantiles(every, n=20)[-1], 3),
                          "failed": len(failures), "seconds": LOAD_SECONDS, "clients": LOAD_CLIENTS}
        print("\nload test:", json.dumps(summary, indent=1))
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "load-test.json").write_text(json.dumps(summary, indent=1))
        assert not failures, failures[:5]
        assert all(len(latencies[k]) >= LOAD_CLIENTS // 4 for k in latencies), summary
        assert finished.status == "succeeded", finished.error
        assert still_training in ("running", "succeeded")
    finally:
        server.stop()


# --- hostile input -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("hostile") / "data").start()
    yield process
    process.stop()


@pytest.mark.parametrize("name, body, needle", [
    ("latin1.jsonl", "{\"messages\": \"caf\u00e9\"}\n".encode("latin-1"), "not UTF-8"),
    ("table.csv", b"question,answer\nwhat,that\n", "not JSON"),
    ("image.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
    ("list.jsonl", b"[1, 2, 3]\n", "not an object"),
])
def test_files_that_are_not_json_lines_are_400_at_upload(server, name, body, needle):
    client = server.client("key-hostile")
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=(name, body), purpose="fine-tune")
    assert needle in caught.value.message and name in caught.value.message and "workbook validate" in caught.value.message
    assert caught.value.body["code"] == "invalid_file_format"


@pytest.mark.parametrize("filename", ["../../etc/passwd", "..\\..\\windows\\system.ini", "/tmp/evil.jsonl", "a/../../b.jsonl"])
def test_path_like_filenames_write_nothing_outside_the_data_dir(server, filename, tmp_path):
    before = set(Path("/tmp").glob("evil*")) | set(server.data_dir.parent.parent.glob("b.jsonl"))
    client = server.client("key-hostile")
    file = client.files.create(file=(filename, head_lines(TRAIN, 2)), purpose="fine-tune")
    assert "/" not in file.filename and "\\" not in file.filename and ".." != file.filename
    stored = [p for p in server.data_dir.rglob("*") if p.is_file() and p.read_bytes() == head_lines(TRAIN, 2)]
    assert len(stored) >= 1 and all(server.data_dir in p.parents for p in stored)
    assert set(Path("/tmp").glob("evil*")) | set(server.data_dir.parent.parent.glob("b.jsonl")) == before
    assert client.files.content(file.id).read() == head_lines(TRAIN, 2)


def test_a_1_gb_upload_is_refused_before_it_is_read(server, tmp_path):
    """The openai client sends a 1 GiB file; the server answers 413 from the Content-Length alone and keeps nothing."""
    big = tmp_path / "huge.jsonl"
    with open(big, "wb") as handle:
        handle.truncate(1024 ** 3)  # sparse: 1 GiB of zero bytes without using the disk
    client = server.client("key-huge")
    before = folder_hashes(server.data_dir / "files") if (server.data_dir / "files").exists() else {}
    started = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as caught, open(big, "rb") as handle:
        client.files.create(file=handle, purpose="fine-tune")
    assert caught.value.status_code == 413 and "536,870,912" in caught.value.message
    assert time.perf_counter() - started < 120
    assert (folder_hashes(server.data_dir / "files") if (server.data_dir / "files").exists() else {}) == before
    assert client.files.list().data == []


@pytest.mark.parametrize("path, body, needle", [
    ("/chat/completions", b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ("/chat/completions", b"\xff\xfe{}", "not valid JSON"),
    ("/chat/completions", b"[1, 2]", "must be a JSON object"),
    ("/chat/completions", json.dumps({"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(), "text"),
    ("/chat/completions", json.dumps({"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**30}).encode(), "max_tokens"),
    ("/chat/completions", json.dumps({"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "x"}], "n": 1e308}).encode(), "'n'"),
    ("/chat/completions", json.dumps({"model": "ft:gpt-4.1-mini:local:x:12345678", "messages": [{"role": "user", "content": "x"}]}).encode(), "does not exist"),
    ("/chat/completions", json.dumps({"model": "../../etc/passwd", "messages": [{"role": "user", "content": "x"}]}).encode(), "does not exist"),
    ("/fine_tuning/jobs", json.dumps({"model": "gpt-4.1-mini", "training_file": {"$ne": None}}).encode(), "training_file"),
    ("/fine_tuning/jobs", json.dumps({"model": ["gpt-4.1-mini"], "training_file": "file-x"}).encode(), "'model'"),
], ids=["nested-100k-deep", "utf16-bytes", "array-body", "image-part", "max-tokens-1e30", "n-1e308", "unknown-ft-model",
        "path-as-model", "object-as-file-id", "list-as-model"])
def test_malformed_bodies_are_4xx_with_a_message_never_5xx(server, path, body, needle):
    response = httpx.post(f"{server.url}/v1{path}", content=body, timeout=120,
                          headers={"Authorization": "Bearer key-hostile", "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert needle in response.json()["error"]["message"]


def _post(server, path: str, body: dict, key: str = "key-hostile") -> httpx.Response:
    """Raw JSON as the escapes write it (json.dumps): a lone surrogate is valid JSON here, which a client that
    encodes UTF-8 first could not even send."""
    return httpx.post(f"{server.url}/v1{path}", content=json.dumps(body).encode(), timeout=120,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


@pytest.mark.parametrize("name", sorted(hostile_text.NOT_TEXT))
def test_strings_that_are_not_text_are_a_400_at_every_request_entry_point(server, name):
    value, words = hostile_text.NOT_TEXT[name]
    chat = {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "lipid panel"}], "max_tokens": 2}
    cases = [
        ("/chat/completions", {**chat, "messages": [{"role": "user", "content": value}]}, "messages[0].content"),
        ("/chat/completions", {**chat, "messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": value}]}]},
         "messages[1].content[0].text"),
        ("/chat/completions", {**chat, "store": True, "metadata": {"note": value}}, "metadata.note"),  # a stored completion's metadata
        ("/chat/completions", {**chat, "tools": [{"type": "function", "function": {"name": "f", "description": value}}]}, "tools[0].function.description"),
        ("/fine_tuning/jobs", {"model": "gpt-4.1-nano", "training_file": "file-x", "metadata": {"note": value}}, "metadata.note"),
        ("/fine_tuning/jobs", {"model": "gpt-4.1-nano", "training_file": "file-x", "suffix": value}, "suffix"),
    ]
    for path, body, param in cases:
        response = _post(server, path, body)
        assert response.status_code == 400, (path, param, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_text", param) and words in error["message"], error


@pytest.mark.parametrize("name", sorted(hostile_text.NOT_TEXT))
def test_a_file_with_text_that_is_not_text_is_refused_at_upload_or_fails_its_job_naming_the_line(server, name):
    value, words = hostile_text.NOT_TEXT[name]
    client = server.client("key-hostile")
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()[:12]]
    hostile = {**rows[0], "messages": [rows[0]["messages"][0], {"role": "user", "content": value}, rows[0]["messages"][2]]}
    first = "".join(json.dumps(r) + "\n" for r in [hostile, *rows[1:]]).encode()
    with pytest.raises(openai.BadRequestError) as caught:  # the upload's sniff reads the first line
        client.files.create(file=("first.jsonl", first), purpose="fine-tune")
    assert caught.value.body["code"] == "invalid_file_format" and "line 1" in caught.value.message and words in caught.value.message
    later = "".join(json.dumps(r) + "\n" for r in [*rows[1:], hostile]).encode()
    file = client.files.create(file=("later.jsonl", later), purpose="fine-tune")
    job = wait_for_job(client, client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-nano").id)
    assert job.status == "failed" and job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 12" in job.error.message and "invalid_text" in job.error.message and words in job.error.message


@pytest.mark.parametrize("name", sorted(hostile_text.ODD_BUT_TEXT))
def test_odd_but_real_text_is_answered(server, name):
    response = _post(server, "/chat/completions", {"model": "gpt-4.1-nano", "max_tokens": 2,
                                                   "messages": [{"role": "user", "content": hostile_text.ODD_BUT_TEXT[name]}]})
    assert response.status_code == 200, response.text


def test_a_10_mb_message_is_a_400_about_the_context_not_a_crash(server):
    response = _post(server, "/chat/completions", {"model": "gpt-4.1-nano", "max_tokens": 2,
                                                   "messages": [{"role": "user", "content": "x " * 5_000_000}]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded", response.text[:300]


def test_a_foreign_model_is_404(server):
    """A model another key trained does not exist for you, even by its exact name."""
    owner = server.client("key-owner")
    file = owner.files.create(file=("t.jsonl", head_lines(TRAIN, 10)), purpose="fine-tune")
    job = wait_for_job(owner, owner.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-nano",
                                                            hyperparameters={"n_epochs": 1, "batch_size": 5}).id)
    other = server.client("key-other")
    for call in (lambda: other.models.retrieve(job.fine_tuned_model),
                 lambda: other.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "x"}]),
                 lambda: other.models.delete(job.fine_tuned_model)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError, match="no file with id"):
        other.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-nano")


# --- schema-driven fuzzing -----------------------------------------------------------------------------

def test_schemathesis_finds_no_server_error(server, tmp_path):
    """Requests generated from OpenAI's own OpenAPI description of these endpoints (valid and invalid, a third of their
    body strings given a hostile string: fuzz_hooks.py) never get a 5xx."""
    spec = json.loads(CONTRACT.read_text())
    # the subset keeps a reference to a response component it does not carry; give it one so the operation is tested
    spec["components"].setdefault("responses", {}).setdefault("TooManyRequests", {"description": "Too many requests"})
    (tmp_path / "contract.json").write_text(json.dumps(spec))
    # real ids for the path parameters, so that requests reach past the 404s into each operation's own checks
    client = server.client("key-fuzz")
    file = client.files.create(file=("fuzz.jsonl", head_lines(TRAIN, 10)), purpose="fine-tune")
    job = wait_for_job(client, client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-nano",
                                                              hyperparameters={"n_epochs": 1, "batch_size": 5}).id)
    (tmp_path / "schemathesis.toml").write_text(
        f'[parameters]\n"path.file_id" = "{file.id}"\n"path.fine_tuning_job_id" = "{job.id}"\n"path.model" = "{job.fine_tuned_model}"\n')
    report = tmp_path / "junit.xml"
    command = [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(tmp_path / "schemathesis.toml"),
               "run", str(tmp_path / "contract.json"), "--url", f"{server.url}/v1",
               "--header", "Authorization: Bearer key-fuzz", "--checks", "not_a_server_error", "--max-examples", "8",
               "--phases", "examples,coverage,fuzzing", "--request-timeout", "120", "--seed", "7",
               "--report", "junit", "--report-junit-path", str(report), "--no-color"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=tmp_path,  # its cache stays there
                            env={**os.environ, "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("fuzz_hooks.py"))})
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Errored: " not in result.stdout and "Tested: 18" in result.stdout, result.stdout[-3000:]


# --- no open doors -----------------------------------------------------------------------------------

def test_a_page_that_rebinds_its_name_to_this_machine_gets_nothing(server):
    """DNS rebinding: the browser sends the attacker's host name; the key it might guess holds nothing either."""
    client = server.client("key-doors")
    file = client.files.create(file=("private.jsonl", head_lines(TRAIN, 2)), purpose="fine-tune")
    for path, key in ((f"/v1/files/{file.id}/content", "key-doors"), ("/health", None)):
        response = httpx.get(f"{server.url}{path}", headers={"Host": "attacker.example", **({"Authorization": f"Bearer {key}"} if key else {})})
        assert response.status_code == 403 and response.json()["error"]["code"] == "host_not_allowed", response.text
        assert head_lines(TRAIN, 2).decode()[:20] not in response.text
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        assert httpx.get(f"{server.url}/v1/files/{file.id}/content", headers={"Host": host, "Authorization": "Bearer key-doors"}).status_code == 200


def test_requests_from_a_page_of_another_origin_are_refused(server):
    headers = {"Authorization": "Bearer key-doors"}
    foreign = httpx.get(f"{server.url}/v1/models", headers={**headers, "Origin": "http://evil.example"})
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "cross_origin_refused"
    assert httpx.get(f"{server.url}/v1/models", headers={**headers, "Origin": "null"}).status_code == 403
    assert httpx.get(f"{server.url}/v1/models", headers={**headers, "Origin": server.url}).status_code == 200  # its own origin


def test_an_open_host_needs_keys_or_an_explicit_allow_open(tmp_path):
    refused = subprocess.run([sys.executable, "-m", "helpers.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port()),
                              "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--api-keys" in refused.stderr and "--allow-open" in refused.stderr
    opened = ServerProcess(tmp_path / "open", "--host", "0.0.0.0", "--allow-open").start()
    try:
        assert "WARNING: --allow-open" in Path(opened.log.name).read_text()
        assert opened.client("anyone").models.list().data  # open as asked; any host name
        assert httpx.get(f"{opened.url}/health", headers={"Host": "workshop.example"}).status_code == 200
    finally:
        opened.stop()
    named = ServerProcess(tmp_path / "named", "--host", "0.0.0.0", "--allow-open", "--allowed-hosts", "workshop.example").start()
    try:
        assert httpx.get(f"{named.url}/health", headers={"Host": "workshop.example:8321"}).status_code == 200
        assert httpx.get(f"{named.url}/health", headers={"Host": "attacker.example"}).status_code == 403
    finally:
        named.stop()
