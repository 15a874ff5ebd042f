"""Workshop mode: listed keys only, per-key limits (413, 429 + Retry-After), a fair queue, the facilitator's
view of it, and notebooks pointed at a shared server. A real server process, the official client."""
from __future__ import annotations

import subprocess
import sys
import time

import httpx
import openai
import pytest
from conftest import DATA, head_lines
from server_harness import ServerProcess, wait_for_job

TRAIN = DATA / "billing" / "train.jsonl"
KEYS = {"wb-alice-7f3a": "alice", "wb-bob-91c2": "bob", "wb-carol-5d0e": "carol"}
TINY_JOB = {"model": "gpt-4.1-nano", "hyperparameters": {"n_epochs": 1, "batch_size": 5}}


def lines(n: int) -> bytes:
    return head_lines(TRAIN, n)


@pytest.fixture(scope="module")
def workshop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("workshop")
    keys = folder / "keys.txt"
    keys.write_text("# name per key\n" + "".join(f"{k} {v}\n" for k, v in KEYS.items()))
    server = ServerProcess(folder / "data", "--api-keys", str(keys), "--max-upload-mb", "1", "--max-storage-mb", "2",
                           "--max-jobs-per-key", "1").start()
    yield server
    server.stop()


def test_only_listed_keys_get_in_and_each_key_is_its_own_namespace(workshop):
    assert workshop.http("GET", "/files", key="sk-guess").status_code == 401
    assert "facilitator" in workshop.http("GET", "/files", key="sk-guess").json()["error"]["message"]
    alice, bob = workshop.client("wb-alice-7f3a"), workshop.client("wb-bob-91c2")
    mine = alice.files.create(file=("mine.jsonl", lines(10)), purpose="fine-tune")
    assert mine.id not in [f.id for f in bob.files.list().data]
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(mine.id)
    alice.files.delete(mine.id)


def test_a_file_over_the_per_file_limit_is_413_before_its_body_is_read(workshop):
    client = workshop.client("wb-carol-5d0e")
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", lines(333) * 10), purpose="fine-tune")  # about 1.3 MB
    assert caught.value.status_code == 413 and caught.value.body["code"] == "file_too_large"
    assert "1,048,576 bytes" in caught.value.message
    assert client.files.list().data == []


def test_the_per_key_storage_limit_is_413_and_names_the_way_out(workshop):
    client = workshop.client("wb-carol-5d0e")
    chunk = lines(333) * 2  # about 0.26 MB
    while len(chunk) < 700_000:
        chunk += lines(333)
    kept = [client.files.create(file=(f"part{i}.jsonl", chunk), purpose="fine-tune") for i in range(2)]
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("part3.jsonl", chunk), purpose="fine-tune")
    assert caught.value.status_code == 413 and caught.value.body["code"] == "storage_limit_reached"
    assert "client.files.delete" in caught.value.message
    client.files.delete(kept[0].id)  # deleting frees the space
    client.files.create(file=("part3.jsonl", chunk), purpose="fine-tune")
    for file in client.files.list().data:
        client.files.delete(file.id)


def test_too_many_unfinished_jobs_is_429_with_retry_after(workshop):
    client = workshop.client("wb-bob-91c2")
    file = client.files.create(file=("t.jsonl", lines(10)), purpose="fine-tune")
    first = client.fine_tuning.jobs.create(training_file=file.id, **TINY_JOB)
    with pytest.raises(openai.RateLimitError) as caught:
        client.fine_tuning.jobs.create(training_file=file.id, **TINY_JOB)
    assert caught.value.body["code"] == "too_many_active_jobs" and "cancel" in caught.value.message
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert wait_for_job(client, first.id).status == "succeeded"
    second = client.fine_tuning.jobs.create(training_file=file.id, **TINY_JOB)  # a finished job frees the slot
    assert wait_for_job(client, second.id).status == "succeeded"


def test_the_course_helper_explains_a_busy_server(workshop):
    from helpers.course.finetune import TrainingNotAvailable, start_job

    client = workshop.client("wb-alice-7f3a")
    file = client.files.create(file=("t.jsonl", lines(10)), purpose="fine-tune")
    job = start_job(client, training_file=file.id, **TINY_JOB)
    with pytest.raises(TrainingNotAvailable, match="busy for your key.*Try again in about"):
        start_job(client, training_file=file.id, **TINY_JOB)
    client.fine_tuning.jobs.cancel(job.id)
    assert wait_for_job(client, job.id).status in ("cancelled", "succeeded")


def test_a_notebook_that_starts_several_jobs_waits_for_a_free_slot(workshop, capsys):
    """06 and 07 start several jobs at once; on a server that runs one per key they wait their turn, saying so."""
    from helpers.course.finetune import start_job

    client = workshop.client("wb-alice-7f3a")
    file = client.files.create(file=("t.jsonl", lines(10)), purpose="fine-tune")
    first = start_job(client, training_file=file.id, **TINY_JOB)
    second = start_job(client, wait_for_slot=True, training_file=file.id, **TINY_JOB)
    assert client.fine_tuning.jobs.retrieve(first.id).status in ("succeeded", "failed", "cancelled")  # it waited for the first
    assert "busy for your key" in capsys.readouterr().out
    assert wait_for_job(client, second.id).status == "succeeded"


def test_the_queue_is_fair_across_keys_and_the_facilitator_sees_it(tmp_path):
    """Alice queues three jobs, then Bob one: Bob's job runs second, not fourth."""
    server = ServerProcess(tmp_path / "data").start()
    try:
        alice, bob = server.client("key-alice"), server.client("key-bob")
        file_a = alice.files.create(file=("a.jsonl", lines(20)), purpose="fine-tune")
        file_b = bob.files.create(file=("b.jsonl", lines(10)), purpose="fine-tune")
        longer = {**TINY_JOB, "hyperparameters": {"n_epochs": 2, "batch_size": 5}}  # outlasts the checks below
        jobs_a = [alice.fine_tuning.jobs.create(training_file=file_a.id, **longer).id for _ in range(3)]
        job_b = bob.fine_tuning.jobs.create(training_file=file_b.id, **TINY_JOB).id
        queue = httpx.get(f"{server.url}/queue").json()
        order = ([queue["running"]["id"]] if queue["running"] else []) + [row["id"] for row in queue["waiting"]]
        assert order == [jobs_a[0], job_b, jobs_a[1], jobs_a[2]]
        shown = subprocess.run([sys.executable, "-m", "helpers.cli", "queue", "--port", str(server.port)],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "4 job(s)" in shown.stdout and job_b in shown.stdout
        finished = {jobs_a[0]: wait_for_job(alice, jobs_a[0]), job_b: wait_for_job(bob, job_b)}
        assert all(job.status == "succeeded" for job in finished.values())

        def start(client, job_id: str) -> int | None:
            return min((e.created_at for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data
                        if e.message == "Fine-tuning job started"), default=None)

        bobs = start(bob, job_b)
        assert start(alice, jobs_a[0]) <= bobs
        # Alice's other two come after Bob's (not started yet, or started since); they are not waited for: cancelled
        later = [start(alice, j) for j in jobs_a[1:]]
        assert all(t is None or t >= bobs for t in later), later
        alice.fine_tuning.jobs.cancel(jobs_a[2])  # the last waiting job first, so the one running cannot hand it the turn
        alice.fine_tuning.jobs.cancel(jobs_a[1])
        assert [wait_for_job(alice, j).status for j in jobs_a[1:]] == ["cancelled", "cancelled"]
    finally:
        server.stop()


def test_notebooks_reach_a_shared_server_with_their_key(workshop, monkeypatch):
    from helpers.course import backend

    monkeypatch.setenv("WORKBOOK_BACKEND", "local")
    monkeypatch.setenv("WORKBOOK_SERVER_URL", workshop.url + "/v1")
    monkeypatch.delenv("WORKBOOK_API_KEY", raising=False)
    with pytest.raises(backend.BackendUnavailable, match="WORKBOOK_API_KEY is not set"):
        backend.client()
    monkeypatch.setenv("WORKBOOK_API_KEY", "wb-wrong")
    with pytest.raises(backend.BackendUnavailable, match="does not accept your WORKBOOK_API_KEY"):
        backend.client()
    monkeypatch.setenv("WORKBOOK_API_KEY", "wb-carol-5d0e")
    client = backend.client()
    assert str(client.base_url).startswith(workshop.url) and client.models.list().data
    monkeypatch.setenv("WORKBOOK_SERVER_URL", "http://127.0.0.1:9")
    with pytest.raises(backend.BackendUnavailable, match="No workbook server answers"):
        backend.client()


def test_keys_command_writes_a_file_serve_accepts(tmp_path):
    from helpers.cli import read_api_keys

    made = subprocess.run([sys.executable, "-m", "helpers.cli", "keys", "25"], capture_output=True, text=True, timeout=60)
    path = tmp_path / "keys.txt"
    path.write_text(made.stdout)
    keys = read_api_keys(str(path))
    assert len(keys) == 25 and sorted(keys.values())[0] == "participant-01" and all(k.startswith("wb-") for k in keys)
    path.write_text("wb-same a\nwb-same b\n")
    with pytest.raises(ValueError, match="line 2: the key is listed twice"):
        read_api_keys(str(path))


def test_retry_after_follows_the_running_jobs_estimate(workshop):
    """The 429's Retry-After comes from the running job's estimate when there is one (never 0 or negative)."""
    client = workshop.client("wb-carol-5d0e")
    file = client.files.create(file=("t.jsonl", lines(30)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-nano", hyperparameters={"n_epochs": 2, "batch_size": 2})
    deadline = time.monotonic() + 300
    while client.fine_tuning.jobs.retrieve(job.id).estimated_finish is None:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    with pytest.raises(openai.RateLimitError) as caught:
        client.fine_tuning.jobs.create(training_file=file.id, **TINY_JOB)
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 600
    client.fine_tuning.jobs.cancel(job.id)
    assert wait_for_job(client, job.id).status == "cancelled"
