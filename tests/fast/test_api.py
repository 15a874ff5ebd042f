"""The fast tier: the server's routes through FastAPI's TestClient, with a fake engine and no model; the request
models' rules; the fair queue; the settings. ``make test-fast`` runs this folder in seconds."""
from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from helpers.server.app import create_app
from helpers.server.chat_template import PROJECT_CALLS, CallFormat
from helpers.server.hyperparameters import hyperparameters, resolve_auto
from helpers.server.inference import Generation
from helpers.server.jobs import JobRunner, JobStatus
from helpers.server.protocol import ChatCompletion, CreateJob
from helpers.server.state import Limits
from helpers.settings import DEFAULT_PORT, settings

CHAT = {"messages": [{"role": "user", "content": "Lipid panel?"}, {"role": "assistant", "content": "80061"}]}


class FakeEngine:
    """Answers every request with the last user message reversed; counts words as tokens. No model is loaded."""

    def __init__(self) -> None:
        self.stats = {"requests": 0}
        self.forgotten: list[Path] = []
        self.asked: list[tuple] = []

    def prompt_tokens(self, base, messages, functions=None) -> int:
        return sum(len(str(m.get("content") or "").split()) for m in messages)

    def call_format(self, base) -> CallFormat:
        return PROJECT_CALLS

    def unavailable(self, base) -> str | None:
        return None

    def close(self) -> None:
        pass

    def submit(self, target, messages, sampling, functions=None) -> Future:
        self.stats["requests"] += 1
        self.asked.append((target, messages, sampling))
        future: Future = Future()
        text = str(messages[-1]["content"])[::-1]
        future.set_result(Generation([text] * sampling.n, ["stop"] * sampling.n, self.prompt_tokens(None, messages), len(text.split())))
        return future

    def forget(self, weights: Path) -> None:
        self.forgotten.append(weights)


class NoModels:
    def loaded(self) -> list:
        return []

    def memory(self) -> dict:
        return {}


@pytest.fixture()
def api(tmp_path):
    """The app with a fake engine and a real job runner whose worker never starts (jobs stay queued)."""
    models = NoModels()
    engine = FakeEngine()
    app = create_app(tmp_path, start_worker=False, allowed_hosts=None, models=models, engine=engine,  # type: ignore[arg-type]
                     limits=Limits(max_active_jobs=2))
    with TestClient(app, headers={"Authorization": "Bearer key-a"}) as client:
        client.engine = engine  # type: ignore[attr-defined]
        yield client


def upload(client: TestClient, rows: list[dict] | None = None, key: str = "key-a") -> str:
    data = "".join(json.dumps(r) + "\n" for r in (rows or [CHAT] * 10)).encode()
    response = client.post("/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"},
                           headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def error(response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_files_are_uploaded_listed_and_kept_per_key(api):
    file_id = upload(api)
    assert [f["id"] for f in api.get("/v1/files").json()["data"]] == [file_id]
    assert api.get(f"/v1/files/{file_id}/content").content.count(b"\n") == 10
    other = api.get(f"/v1/files/{file_id}", headers={"Authorization": "Bearer key-b"})
    assert other.status_code == 404 and error(other)["code"] == "file_not_found"
    assert api.delete(f"/v1/files/{file_id}").json() == {"id": file_id, "object": "file", "deleted": True}


def test_a_file_that_is_not_json_lines_is_refused_at_upload(api):
    response = api.post("/v1/files", files={"file": ("table.csv", b"question,answer\n")}, data={"purpose": "fine-tune"})
    assert response.status_code == 400 and error(response)["code"] == "invalid_file_format"


def test_no_key_is_a_401_in_openais_shape(api):
    response = api.get("/v1/models", headers={"Authorization": ""})
    assert response.status_code == 401 and error(response)["code"] == "missing_api_key"


def test_a_job_is_created_queued_in_the_fair_order_and_cancelled(api):
    file_id = upload(api)
    job = api.post("/v1/fine_tuning/jobs", json={"model": "gpt-4.1-mini", "training_file": file_id,
                                                 "hyperparameters": {"n_epochs": 2}}).json()
    assert job["status"] == JobStatus.VALIDATING_FILES and job["hyperparameters"] == {
        "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert "_base" not in job  # the server's own fields stay off the wire
    assert api.app.state.workbook.runner.waiting() == [job["id"]]
    refused = api.get("/queue")  # the TestClient is not on loopback
    assert refused.status_code == 403 and error(refused)["code"] == "loopback_only"
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert events[0]["message"] == f"Created fine-tuning job: {job['id']}"
    cancelled = api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == JobStatus.CANCELLED
    again = api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert again.status_code == 400 and error(again)["code"] == "job_not_cancellable"


def test_the_active_job_limit_is_a_429_with_retry_after(api):
    file_id = upload(api)
    for _ in range(2):
        assert api.post("/v1/fine_tuning/jobs", json={"model": "gpt-4.1-mini", "training_file": file_id}).status_code == 200
    refused = api.post("/v1/fine_tuning/jobs", json={"model": "gpt-4.1-mini", "training_file": file_id})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == str(Limits().retry_after_s) == "15"
    assert error(refused)["code"] == "too_many_active_jobs"


@pytest.mark.parametrize("body, status, param, needle", [
    ({"training_file": "file-x"}, 400, "model", "'model' is required"),
    ({"model": ["gpt-4.1-mini"], "training_file": "file-x"}, 400, "model", "'model'"),
    ({"model": "gpt-9", "training_file": "file-x"}, 400, "model", "not available for fine-tuning"),
    ({"model": "gpt-4.1-mini", "training_file": {"$ne": None}}, 400, "training_file", "training_file"),
    ({"model": "gpt-4.1-mini", "training_file": "file-nope"}, 400, "training_file", "no file with id 'file-nope'"),
    ({"model": "gpt-4.1-mini", "training_file": "file-x", "hyperparameters": {"n_epochs": 51}}, 400, "n_epochs", "between 1 and 50"),
    ({"model": "gpt-4.1-mini", "training_file": "file-x", "hyperparameters": {"warmup": 3}}, 400, "hyperparameters", "warmup"),
    ({"model": "gpt-4.1-mini", "training_file": "file-x", "method": {"type": "rft"}}, 400, "method", "'supervised' or 'dpo'"),
    # a type that is no text (schemathesis sent an object: it was a 500)
    ({"model": "gpt-4.1-mini", "training_file": "file-x", "method": {"type": {}}}, 400, "method", "'supervised' or 'dpo'"),
    ({"model": "gpt-4.1-mini", "training_file": "file-x", "suffix": "a b"}, 400, "suffix", "'suffix'"),
    ({"model": "gpt-4.1-mini", "training_file": "file-x", "seed": -1}, 400, "seed", "'seed'"),
    ({"model": "gpt-4.1-mini", "training_file": "file-x", "colour": "red"}, 400, "colour", "Unknown field(s) ['colour']"),
])
def test_a_bad_job_request_is_a_400_naming_the_parameter(api, body, status, param, needle):
    response = api.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == status
    problem = error(response)
    assert problem["param"] == param and needle in problem["message"], problem


def test_a_chat_completion_through_the_fake_engine(api):
    body = api.post("/v1/chat/completions", json={"model": "gpt-4.1-mini", "messages": [
        {"role": "developer", "content": "Code it."}, {"role": "user", "content": "lipid panel"}], "n": 2, "max_tokens": 8,
        "temperature": 0.5, "user": "a label", "store": True, "metadata": {"lesson": "fast"}}).json()
    assert [c["message"]["content"] for c in body["choices"]] == ["lenap dipil"] * 2
    assert body["usage"]["prompt_tokens"] == 4 and body["object"] == "chat.completion"
    target, messages, sampling = api.engine.asked[-1]
    assert messages[0]["role"] == "system" and (sampling.max_tokens, sampling.temperature, sampling.n) == (8, 0.5, 2)
    stored = api.get("/v1/chat/completions", params={"metadata[lesson]": "fast"}).json()["data"]
    assert [c["id"] for c in stored] == [body["id"]]
    assert [m["role"] for m in api.get(f"/v1/chat/completions/{body['id']}/messages").json()["data"]] == ["system", "user"]


@pytest.mark.parametrize("extra, param, needle", [
    ({"messages": []}, "messages", "'messages'"),
    ({"temperature": 9}, "temperature", "'temperature'"),
    ({"n": 1e308}, "n", "'n'"),
    ({"max_tokens": 10**9}, "max_tokens", "max_tokens is too large"),
    ({"stop": ["a", ""]}, "stop", "'stop'"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'role'"),
    ({"stream": "yes"}, "stream", "'stream'"),
    ({"stream": True, "n": 2}, "n", "a stream on this server carries one answer"),
    ({"colour": "red"}, "colour", "Unknown field(s)"),
])
def test_a_bad_chat_request_is_a_400_naming_the_parameter(api, extra, param, needle):
    body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "x"}], **extra}
    response = api.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    problem = error(response)
    assert problem["param"] == param and needle in problem["message"], problem


def test_an_unknown_fine_tuned_model_is_a_404(api):
    response = api.post("/v1/chat/completions", json={"model": "ft:gpt-4.1-mini:local::nope", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 404 and error(response)["code"] == "model_not_found"


def test_hyperparameters_resolve_to_values_or_auto():
    assert hyperparameters({"n_epochs": 3.0, "learning_rate_multiplier": 2}, "supervised") == {
        "n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2.0}
    assert hyperparameters(None, "dpo")["beta"] == "auto"
    job = CreateJob.model_validate({"model": "gpt-4.1-mini", "training_file": "file-x",
                                    "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}})
    assert job.kind == "dpo" and job.resolved["beta"] == 0.2
    assert ChatCompletion.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}).not_used == {"top_logprobs": 2}


def test_the_queue_is_fair_across_keys(tmp_path):
    """Key a's three jobs and key b's one: b's job runs second, not fourth."""
    from helpers.server.store import Store

    store = Store(tmp_path)
    runner = JobRunner(store, NoModels())  # type: ignore[arg-type]
    ids = []
    for key, n in (("a", 3), ("b", 1)):
        for i in range(n):
            job = store.put("job", {"id": f"ftjob-{key}{i}", "status": "queued", "created_at": i}, key)
            runner.submit(job["id"])
            ids.append(job["id"])
    assert runner.waiting() == ["ftjob-a0", "ftjob-b0", "ftjob-a1", "ftjob-a2"]


def test_a_job_record_reads_the_stores_old_layout_and_keeps_its_own_fields_off_the_wire(tmp_path):
    """Jobs stored before records were typed read unchanged (the server's fields under ``_`` names, a field no longer
    used ignored); changes by field name land under the stored names; the wire is OpenAI's job, nothing more."""
    from openai.types.fine_tuning import FineTuningJob

    from helpers.server.records import Jobs
    from helpers.server.store import Store

    store = Store(tmp_path)
    jobs = Jobs(store)
    stored = {"object": "fine_tuning.job", "id": "ftjob-old", "model": "gpt-4.1-mini", "created_at": 1, "finished_at": None,
              "fine_tuned_model": None, "organization_id": "org-local", "result_files": [], "status": "queued",
              "validation_file": None, "training_file": "file-a", "hyperparameters": {"n_epochs": 2},
              "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}, "trained_tokens": None,
              "error": None, "seed": 7, "estimated_finish": None, "integrations": [], "metadata": None,
              "user_provided_suffix": None, "_base": "smollm2-135m-instruct", "_start_from": None, "_billing_tokens": 120,
              "_adapter": "from an older version"}
    store.put("job", stored, "key")
    job = jobs.get("ftjob-old", "key")
    assert job is not None and (job.base, job.billing_tokens, job.kind, job.method_hyperparameters) == (
        "smollm2-135m-instruct", 120, "supervised", {"n_epochs": 2})
    assert jobs.get("ftjob-old", "another key") is None
    done = jobs.update("ftjob-old", status=JobStatus.SUCCEEDED, dpo_reference=[(-1.5, -2.5)])
    body = store.get("job", "ftjob-old", "key")
    assert body is not None and body["status"] == "succeeded" and body["_dpo_reference"] == [[-1.5, -2.5]]
    assert done.status.finished and done.dpo_reference == [(-1.5, -2.5)]
    wire = done.wire()
    assert not [k for k in wire if k.startswith("_")] and set(wire) - set(FineTuningJob.model_fields) == {"user_provided_suffix"}
    assert FineTuningJob.model_validate(wire).status == "succeeded"
    with pytest.raises(KeyError):
        jobs.update("ftjob-old", adapter="x")


def test_a_model_record_reads_the_stores_old_layout_and_keeps_its_base_off_the_wire(tmp_path):
    """Fine-tuned models stored before records were typed (no ``_base_location``) read unchanged; the wire is OpenAI's
    model, nothing more; a model trained on a brought base keeps where that base came from."""
    from openai.types import Model

    from helpers.server.records import ModelRecord, Models
    from helpers.server.store import Store

    store = Store(tmp_path)
    models = Models(store)
    store.put("model", {"id": "ft:gpt-4.1-mini:local::old", "object": "model", "created": 1, "owned_by": "org-local",
                        "_base": "smollm2-135m-instruct", "_job": "ftjob-old"}, "key")
    old = models.get("ft:gpt-4.1-mini:local::old", "key")
    assert old is not None and (old.base, old.base_location, old.job) == ("smollm2-135m-instruct", "", "ftjob-old")
    assert models.get("ft:gpt-4.1-mini:local::old", "another key") is None
    assert Model.model_validate(old.wire()).id == old.id and set(old.wire()) == set(Model.model_fields) - {"shutdown_date"}
    models.put(ModelRecord(id="ft:mine:local::new", created=2, owned_by="org-local", base="mine", base_location="/models/mine",
                           job="ftjob-new"), "key")
    body = store.get("model", "ft:mine:local::new", "key")
    assert body is not None and (body["_base"], body["_base_location"], body["_job"]) == ("mine", "/models/mine", "ftjob-new")
    assert [m.id for m in models.all("key")] == ["ft:gpt-4.1-mini:local::old", "ft:mine:local::new"]


def test_checkpoints_and_stored_completions_read_the_stores_layout_and_keep_the_servers_fields_off_the_wire(tmp_path):
    """A checkpoint as earlier versions stored it (``_epoch``) reads as a typed record, its wire is OpenAI's checkpoint;
    a stored completion keeps the messages it answered apart from the answer OpenAI's type describes."""
    from openai.types.chat import ChatCompletion
    from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

    from helpers.server.records import Checkpoints, StoredCompletion
    from helpers.server.store import Store

    store = Store(tmp_path)
    checkpoints = Checkpoints(store)
    for step, epoch in ((4, 1), (8, 2)):
        store.put("checkpoint", {"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{step}", "created_at": step,
                                 "fine_tuned_model_checkpoint": f"ft:x:local::j:ckpt-step-{step}", "step_number": step,
                                 "metrics": {"step": step, "train_loss": 1.5}, "fine_tuning_job_id": "ftjob-j", "_epoch": epoch},
                  "key", parent="ftjob-j")
    kept = checkpoints.of_job("ftjob-j")
    assert [(c.step_number, c.epoch) for c in kept] == [(4, 1), (8, 2)] and checkpoints.of_job("ftjob-other") == []
    wire = kept[-1].wire()
    assert "epoch" not in wire and "_epoch" not in wire and FineTuningJobCheckpoint.model_validate(wire).metrics.train_loss == 1.5
    checkpoints.delete(kept[0])
    assert [c.id for c in checkpoints.all("key")] == ["ftckpt-8"] and checkpoints.all("another key") == []

    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "metadata": {"run": "a"},
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    stored = StoredCompletion.model_validate({**answer, "request": [{"role": "user", "content": "Hello"}]}).stored()
    assert stored["_request"] == [{"role": "user", "content": "Hello"}] and "request" not in stored
    again = StoredCompletion.model_validate(stored)
    assert again.wire() == answer and ChatCompletion.model_validate(again.wire()).choices[0].message.content == "Hi"


def test_the_worker_goes_on_to_the_next_job_when_a_failed_job_cannot_be_recorded(tmp_path, caplog):
    """A job whose run fails, and whose failure cannot be written either, is logged; the queue does not stop."""
    import threading

    from helpers.server.store import Store

    store = Store(tmp_path)
    runner = JobRunner(store, NoModels())  # type: ignore[arg-type]
    ran = threading.Event()

    def run(job_id: str) -> None:
        if job_id == "ftjob-broken":
            raise RuntimeError("the trainer broke")
        ran.set()

    def finish(job_id: str, *args, **kwargs):
        raise OSError("disk full")

    runner._run, runner._finish = run, finish  # type: ignore[method-assign]
    for job_id in ("ftjob-broken", "ftjob-next"):
        store.put("job", {"id": job_id, "status": "queued", "created_at": 1}, "key")
        runner.submit(job_id)
    runner._thread.start()
    assert ran.wait(30), "the worker stopped after a job it could not mark failed"
    assert "ftjob-broken could not be marked failed" in caplog.text


def test_settings_read_workbook_variables_now(monkeypatch, tmp_path):
    monkeypatch.delenv("WORKBOOK_PORT", raising=False)
    assert settings().port == DEFAULT_PORT
    monkeypatch.setenv("WORKBOOK_PORT", "8400")
    monkeypatch.setenv("WORKBOOK_SERVER_DIR", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_MODEL_CACHE", "")  # empty counts as unset
    monkeypatch.setenv("WORKBOOK_API_KEY", "wb-secret")
    now = settings()
    assert (now.port, now.server_dir, now.model_cache) == (8400, tmp_path, None)
    assert "wb-secret" not in repr(now) and now.api_key.get_secret_value() == "wb-secret"


def test_importing_helpers_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    code = "import os, helpers, helpers.course, helpers.server.app; print(os.environ.get('TIKTOKEN_CACHE_DIR'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None" and not any(tmp_path.iterdir())


def test_answers_are_the_openai_packages_own_types(api):
    """Every answer parses as the type the official client gives the user, with no field left over but
    ``user_provided_suffix``, which OpenAI's service sends on a job and the package's type does not list."""
    from openai.types import FileObject, Model
    from openai.types.chat import ChatCompletion as ChatCompletionType
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

    def exactly(kind, body: dict):
        parsed = kind.model_validate(body)
        extra = set(parsed.model_extra or {}) - {"user_provided_suffix"}
        assert not extra, f"{kind.__name__} has no field(s) {sorted(extra)}"
        return parsed

    file_id = upload(api)
    exactly(FileObject, api.get(f"/v1/files/{file_id}").json())
    job = exactly(FineTuningJob, api.post("/v1/fine_tuning/jobs", json={"model": "gpt-4.1-mini", "training_file": file_id}).json())
    assert job.status == JobStatus.VALIDATING_FILES
    for event in api.get(f"/v1/fine_tuning/jobs/{job.id}/events").json()["data"]:
        exactly(FineTuningJobEvent, event)
    for model in api.get("/v1/models").json()["data"]:
        exactly(Model, model)
    exactly(ChatCompletionType, api.post("/v1/chat/completions", json={"model": "gpt-4.1-mini", "messages": [
        {"role": "user", "content": "hi"}]}).json())


def test_the_methods_the_server_trains_are_its_registry_and_the_catalogues():
    from helpers.pricing.catalogue import OPEN_MODEL_METHODS
    from helpers.server.hyperparameters import COMMON
    from helpers.server.methods import METHODS

    assert tuple(METHODS) == OPEN_MODEL_METHODS  # what a brought model's catalogue entry says it can be trained with
    for name, method in METHODS.items():
        assert method.name == name and method.examples in ("chat", "preference", "prompt")
        assert set(hyperparameters(None, name)) == {*COMMON, *method.own_hyperparameters, *method.fixed_hyperparameters}
        assert resolve_auto(name, {}, 100)["learning_rate_multiplier"] == method.auto_lr_multiplier


CODE_GRADER = {"type": "string_check", "name": "code", "input": "{{ sample.output_text }}", "reference": "{{ item.code }}",
               "operation": "eq"}
PROMPT = {"messages": [{"role": "user", "content": "Lipid panel?"}], "code": "80061"}


def test_a_reinforcement_job_keeps_its_grader_and_openais_hyperparameters(api):
    """OpenAI's shape: ``method.reinforcement`` with a grader and its hyperparameters; the job shows both back, and
    ``reasoning_effort`` stays "default" (the local models do not reason apart)."""
    from openai.types.fine_tuning import FineTuningJob

    file_id = upload(api, [PROMPT] * 10)
    body = api.post("/v1/fine_tuning/jobs", json={"model": "gpt-4.1-mini", "training_file": file_id, "method": {
        "type": "reinforcement", "reinforcement": {"grader": CODE_GRADER, "hyperparameters": {"compute_multiplier": 2}}}}).json()
    job = FineTuningJob.model_validate(body)
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.model_dump(exclude_none=True) == CODE_GRADER
    hyper = job.method.reinforcement.hyperparameters
    assert (hyper.compute_multiplier, hyper.eval_interval, hyper.reasoning_effort) == (2.0, "auto", "default")


@pytest.mark.parametrize("reinforcement, param, needle", [
    ({}, "method.reinforcement.grader", "'method.reinforcement.grader' must be an object"),
    ({"grader": {**CODE_GRADER, "operation": "contains"}}, "method.reinforcement.grader.operation", "'eq', 'ne'"),
    ({"grader": CODE_GRADER, "hyperparameters": {"reasoning_effort": "high"}}, "reasoning_effort", "can only be 'default'"),
    ({"grader": CODE_GRADER, "hyperparameters": {"compute_multiplier": 9}}, "compute_multiplier", "between 0.5 and 4"),
    ({"grader": CODE_GRADER, "hyperparameters": {"beta": 0.1}}, "hyperparameters", "Unknown hyperparameter(s) ['beta']"),
    ({"grader": {"type": "score_model", "name": "judge", "model": "ft:gpt-4.1-mini:local:gone:x",
                 "input": [{"role": "user", "content": "{{ sample.output_text }}"}]}},
     "method.reinforcement.grader.model", "does not exist"),
    ({"grader": {"type": "label_model", "name": "judge", "model": "gpt-4.1-mini", "labels": ["yes", "no"], "passing_labels": ["yes"],
                 "input": [{"role": "user", "content": "{{ sample.output_text }}"}]}}, "method.reinforcement.grader.type", "put it in a multi"),
])
def test_a_bad_reinforcement_job_is_a_400_naming_the_field(api, reinforcement, param, needle):
    response = api.post("/v1/fine_tuning/jobs", json={"model": "gpt-4.1-mini", "training_file": "file-x",
                                                      "method": {"type": "reinforcement", "reinforcement": reinforcement}})
    assert response.status_code == 400
    problem = error(response)
    assert problem["param"] == param and needle in problem["message"], problem


def test_a_prompt_file_validates_as_prompts_and_a_chat_file_missing_a_reply_still_says_so(tmp_path):
    from helpers.data.validate import validate_file

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({**PROMPT, "code": str(80061 + i)}) + "\n" for i in range(10)))
    report = validate_file(prompts, model="gpt-4.1-mini")
    assert report.ok and report.format == "prompt" and report.n_examples == 10
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(CHAT) + "\n" + json.dumps(PROMPT) + "\n")
    codes = [issue.code for issue in validate_file(mixed, model="gpt-4.1-mini", min_examples=1).errors]
    assert codes == ["no_assistant_message"]
