"""The local backend over real HTTP with the official, strict ``openai`` client, and a real tiny training run."""
from __future__ import annotations

import base64
import json
import time

import httpx
import openai
import pytest
from conftest import DATA, head_lines
from server_harness import ServerProcess, assert_contract, wait_for_job

from helpers.course.billing import parse_answer
from helpers.data.validate import validate_file

TRAIN = DATA / "billing" / "train.jsonl"
VALID = DATA / "billing" / "validation.jsonl"
N_TRAIN, N_VALID, EPOCHS, BATCH = 16, 8, 2, 4
pytestmark = pytest.mark.usefixtures("fp32")  # exports are compared with the server in fp32 (conftest.fp32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("server") / "data").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    """One real fine-tuning job, as the seed's code runs it: upload, create with gpt-4.1-mini, wait."""
    client = server.client()
    folder = tmp_path_factory.mktemp("files")
    (folder / "train.jsonl").write_bytes(head_lines(TRAIN, N_TRAIN))
    (folder / "valid.jsonl").write_bytes(head_lines(VALID, N_VALID))
    train_file = client.files.create(file=open(folder / "train.jsonl", "rb"), purpose="fine-tune")
    valid_file = client.files.create(file=open(folder / "valid.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=train_file.id, validation_file=valid_file.id, model="gpt-4.1-mini",
                                         suffix="billing", seed=7, metadata={"course": "workbook"},
                                         hyperparameters={"n_epochs": EPOCHS, "batch_size": BATCH})
    created = job
    job = wait_for_job(client, job.id)
    return {"created": created, "job": job, "train_file": train_file, "valid_file": valid_file, "folder": folder}


# --- the whole lifecycle ------------------------------------------------------------------------------

def test_job_succeeds_with_resolved_hyperparameters_and_billed_tokens(trained):
    created, job = trained["created"], trained["job"]
    assert created.status == "validating_files" and created.fine_tuned_model is None and created.trained_tokens is None
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:gpt-4.1-mini:local:billing:")
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (EPOCHS, BATCH)
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.n_epochs == EPOCHS
    billing = validate_file(trained["folder"] / "train.jsonl", model="gpt-4.1-mini").stats["billing_tokens_per_epoch"]
    assert job.trained_tokens == billing * EPOCHS
    assert job.finished_at >= job.created_at and job.seed == 7 and job.metadata == {"course": "workbook"}


def test_events_tell_the_story_newest_first(server, trained):
    client = server.client()
    events = client.fine_tuning.jobs.list_events(trained["job"].id, limit=100).data
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    story = [e.message for e in reversed(events)]
    expected_order = ["Created fine-tuning job", "Validating training file", "Validating validation file",
                      "Files validated, moving job to queued state", "Fine-tuning job started", "Local backend: gpt-4.1-mini is served by",
                      "Step 1/8: training loss=", "Checkpoint created at step 4", "Step 8/8", "Checkpoint created at step 8",
                      "New fine-tuned model created: ft:gpt-4.1-mini", "The job has successfully completed"]
    position = 0
    for wanted in expected_order:
        position = next(i for i in range(position, len(story)) if story[i].startswith(wanted)) + 1
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 8
    last = metrics[0].data
    assert set(last) >= {"step", "total_steps", "train_loss", "train_mean_token_accuracy", "valid_loss",
                         "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"}
    assert last["step"] == last["total_steps"] == 8
    page = client.fine_tuning.jobs.list_events(trained["job"].id, limit=3)
    after = client.fine_tuning.jobs.list_events(trained["job"].id, limit=3, after=page.data[-1].id)
    assert page.has_more and [e.id for e in page.data + after.data] == [e.id for e in events[:6]]


def test_events_are_complete_the_moment_the_status_reads_final(server):
    """Polled as fast as the client can from the last step on (the job's finishing work: its checkpoint, model and
    final status): when a job first reads succeeded, its last event is already listed. Before that step the test polls
    gently: a client spinning on two cores starved the training it waits for (56 s for a two-step job)."""
    client = server.client("key-events")
    file = client.files.create(file=("t.jsonl", head_lines(TRAIN, 10)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-nano", hyperparameters={"n_epochs": 1, "batch_size": 5})
    deadline = time.monotonic() + 300
    while not any(e.message.startswith("Step 2/2") for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data):
        assert time.monotonic() < deadline, "the job never reached its last step"
        time.sleep(0.1)
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        pass
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert job.status == "succeeded" and events[0].message == "The job has successfully completed"
    assert any(e.message.startswith("New fine-tuned model created") for e in events)


def test_training_loss_falls_and_results_file_is_base64_csv(server, trained):
    client = server.client()
    result_id = trained["job"].result_files[0]
    meta = client.files.retrieve(result_id)
    assert meta.purpose == "fine-tune-results"
    csv = base64.b64decode(client.files.content(result_id).read()).decode()
    rows = csv.strip().splitlines()
    assert rows[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_one_checkpoint_per_epoch_each_usable_as_a_model(server, trained):
    client = server.client()
    checkpoints = client.fine_tuning.jobs.checkpoints.list(trained["job"].id).data
    assert [c.step_number for c in checkpoints] == [8, 4]  # newest first
    for checkpoint in checkpoints:
        assert checkpoint.fine_tuned_model_checkpoint == f"{trained['job'].fine_tuned_model}:ckpt-step-{checkpoint.step_number}"
        # as on OpenAI, each checkpoint carries the whole validation file's loss at the end of its epoch
        assert {"train_loss", "train_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"} <= \
            set(checkpoint.metrics.model_dump(exclude_none=True))
        reply = client.chat.completions.create(model=checkpoint.fine_tuned_model_checkpoint,
                                               messages=[{"role": "user", "content": "lipid panel"}], max_tokens=5)
        assert reply.model == checkpoint.fine_tuned_model_checkpoint


def test_the_fine_tuned_model_answers_in_the_trained_format(server, trained):
    client = server.client()
    tests = [json.loads(line) for line in (DATA / "billing" / "test.jsonl").read_text().splitlines()[:4]]
    tuned = base = 0
    for example in tests:
        messages = example["messages"][:-1]
        answer = client.chat.completions.create(model=trained["job"].fine_tuned_model, messages=messages, max_tokens=40)
        tuned += parse_answer(answer.choices[0].message.content) is not None
        plain = client.chat.completions.create(model="gpt-4.1-mini", messages=messages, max_tokens=40)
        base += parse_answer(plain.choices[0].message.content) is not None
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert tuned >= 3 and tuned > base, (tuned, base)


def test_one_copy_of_the_base_model_serves_the_trainer_and_chat(server, trained):
    import httpx

    from helpers.pricing.catalogue import resolve_base
    from helpers.server.localmodels import compute_dtype

    client = server.client()
    client.chat.completions.create(model=trained["job"].fine_tuned_model, messages=[{"role": "user", "content": "CBC"}], max_tokens=4)
    client.chat.completions.create(model="gpt-4.1-nano", messages=[{"role": "user", "content": "CBC"}], max_tokens=4)
    loaded = httpx.get(f"{server.url}/health").json()["models"]
    assert [m["base"] for m in loaded] == [resolve_base("gpt-4.1-mini").name]  # every alias, the job and chat: one model
    assert loaded[0]["dtype"] == str(compute_dtype()).removeprefix("torch.")
    assert loaded[0]["training_adapters"] == 0 and loaded[0]["inference_adapters"] >= 1  # the job's adapter left with it


def test_models_list_retrieve_and_delete(server, trained):
    client = server.client()
    name = trained["job"].fine_tuned_model
    ids = [m.id for m in client.models.list().data]
    assert "gpt-4.1-mini" in ids and "smollm2-135m-instruct" in ids and name in ids
    assert client.models.retrieve(name).owned_by == "org-local"
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("gpt-4.1-mini")


def test_jobs_list_filters_by_metadata_newest_first(server, trained):
    client = server.client()
    jobs = client.fine_tuning.jobs.list(metadata={"course": "workbook"}).data
    assert [j.id for j in jobs] == [trained["job"].id]
    assert client.fine_tuning.jobs.list(metadata={"course": "other"}).data == []


# --- contract: raw JSON against OpenAI's OpenAPI schemas -----------------------------------------------

def test_responses_match_the_openapi_contract(server, trained):
    job_id = trained["job"].id
    cases = [
        ("GET", "/files", "ListFilesResponse"),
        ("GET", f"/files/{trained['train_file'].id}", "OpenAIFile"),
        ("GET", "/fine_tuning/jobs", "ListPaginatedFineTuningJobsResponse"),
        ("GET", f"/fine_tuning/jobs/{job_id}", "FineTuningJob"),
        ("GET", f"/fine_tuning/jobs/{job_id}/events", "ListFineTuningJobEventsResponse"),
        ("GET", f"/fine_tuning/jobs/{job_id}/checkpoints", "ListFineTuningJobCheckpointsResponse"),
        ("GET", "/models", "ListModelsResponse"),
        ("GET", f"/models/{trained['job'].fine_tuned_model}", "Model"),
        ("GET", "/chat/completions", "ChatCompletionList"),
    ]
    for method, path, schema in cases:
        response = server.http(method, path)
        assert response.status_code == 200, (path, response.text)
        assert_contract(schema, response.json())
    chat = server.http("POST", "/chat/completions", json={"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert_contract("CreateChatCompletionResponse", chat.json())
    upload = server.http("POST", "/files", files={"file": ("x.jsonl", head_lines(TRAIN, 10))}, data={"purpose": "fine-tune"})
    assert_contract("OpenAIFile", upload.json())
    assert_contract("DeleteFileResponse", server.http("DELETE", f"/files/{upload.json()['id']}").json())


# A model trained on tool calls: notebook 08 trains one at its defaults and scores its calls with tool_choice "auto" (in
# make test, through nbval); tool_choice "none" and "required" are tests/test_chat.py's, on both engines.


def test_stored_completions_are_listed_by_model_and_metadata(server):
    client = server.client("key-stored")
    for i in range(3):
        client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": f"item {i}"}],
                                       max_tokens=3, store=True, metadata={"run": "distill", "item": str(i)})
    client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    listed = client.chat.completions.list(model="gpt-4.1-mini", metadata={"run": "distill"})
    assert [c.metadata["item"] for c in listed.data] == ["0", "1", "2"]
    assert client.chat.completions.retrieve(listed.data[0].id).id == listed.data[0].id
    # The client types stored messages as assistant messages (role Literal["assistant"]), yet the endpoint
    # returns the request's messages; strict validation would reject OpenAI's own answer, so read it plainly.
    plain = openai.OpenAI(base_url=client.base_url, api_key="key-stored", max_retries=0)
    messages = plain.chat.completions.messages.list(listed.data[1].id).data
    assert (messages[-1].role, messages[-1].content) == ("user", "item 1")
    assert client.chat.completions.list(metadata={"run": "other"}).data == []


def test_a_stored_completion_can_be_deleted_by_its_owner_only(server):
    client = server.client("key-forget")
    made = client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "forget me"}],
                                          max_tokens=3, store=True, metadata={"run": "forget"})
    with pytest.raises(openai.NotFoundError):
        server.client("key-other").chat.completions.delete(made.id)  # another key cannot see it, nor delete it
    deleted = client.chat.completions.delete(made.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (made.id, True, "chat.completion.deleted")
    assert client.chat.completions.list(metadata={"run": "forget"}).data == []
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(made.id)


def test_a_server_started_with_training_closed_refuses_jobs_as_openai_does(tmp_path):
    from helpers.course.finetune import TrainingNotAvailable, start_job

    closed = ServerProcess(tmp_path / "data", "--training-closed").start()
    try:
        client = openai.OpenAI(base_url=f"{closed.url}/v1", api_key="key-closed", max_retries=0)
        assert httpx.get(f"{closed.url}/health").json()["training_closed"] is True
        file = client.files.create(file=("t.jsonl", (DATA / "billing" / "validation.jsonl").read_bytes()), purpose="fine-tune")
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=file.id)
        assert refused.value.status_code == 403 and refused.value.code == "training_not_available"
        with pytest.raises(TrainingNotAvailable, match=r"\(training_not_available\): Fine-tuning is not available.*still work\)\. OpenAI is winding down.*2027-01-06.*BACKEND = \"local\""):
            start_job(client, model="gpt-4.1-mini", training_file=file.id)
        assert client.fine_tuning.jobs.list().data == []  # nothing was started
    finally:
        closed.stop()


# --- bad input: a clear 4xx, never a 5xx ------------------------------------------------------------

def test_missing_key_is_401(server):
    response = server.http("GET", "/files", key=None)
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("method, path, kwargs, status, needle", [
    ("GET", "/files/file-nope", {}, 404, "No file with id 'file-nope'"),
    ("GET", "/fine_tuning/jobs/ftjob-nope", {}, 404, "No fine-tuning job"),
    ("GET", "/models/ft:gpt-4.1-mini:local::nope", {}, 404, "does not exist"),
    ("POST", "/fine_tuning/jobs", {"content": b"{not json"}, 400, "not valid JSON"),
    ("POST", "/fine_tuning/jobs", {"json": {"model": "gpt-4.1-mini", "training_file": "file-nope"}}, 400, "no file with id 'file-nope'"),
    ("POST", "/fine_tuning/jobs", {"json": {"model": "gpt-9", "training_file": "file-x"}}, 400, "not available for fine-tuning"),
    ("POST", "/fine_tuning/jobs", {"json": {"model": "ft:gpt-4.1-mini:local:billing:abc", "training_file": "file-x"}}, 400,
     "not one of your fine-tuned models"),
    ("POST", "/fine_tuning/jobs", {"json": {"training_file": "file-x"}}, 400, "'model' is required"),
    ("POST", "/files", {"files": {"file": ("a.jsonl", b"{}")}, "data": {"purpose": "assistants"}}, 400, "purpose='fine-tune'"),
    ("POST", "/files", {"data": {"purpose": "fine-tune"}}, 400, "multipart"),
    ("POST", "/chat/completions", {"json": {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}}, 400, "max_tokens is too large"),
    ("POST", "/chat/completions", {"json": {"model": "gpt-4.1-mini", "messages": []}}, 400, "'messages'"),
    ("POST", "/chat/completions", {"json": {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 9}}, 400, "'temperature'"),
    ("POST", "/chat/completions", {"json": {"model": "ft:gpt-4.1-mini:local::nope", "messages": [{"role": "user", "content": "x"}]}}, 404, "does not exist"),
    ("GET", "/nowhere", {}, 404, "Unknown path"),
])
def test_bad_requests_get_a_clear_4xx(server, method, path, kwargs, status, needle):
    response = server.http(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("hyperparameters, param", [
    ({"n_epochs": 0}, "n_epochs"), ({"n_epochs": 51}, "n_epochs"), ({"batch_size": 1.5}, "batch_size"),
    ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"), ({"n_epochs": "three"}, "n_epochs"), ({"warmup": 3}, "hyperparameters"),
])
def test_out_of_range_hyperparameters_are_400_naming_the_parameter(server, trained, hyperparameters, param):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(training_file=trained["train_file"].id, model="gpt-4.1-mini", hyperparameters=hyperparameters)
    assert caught.value.body["param"] == param


def test_a_broken_training_file_fails_the_job_naming_the_line(server):
    client = server.client()
    broken = client.files.create(file=("flawed.jsonl", (DATA / "billing" / "flawed.jsonl").read_bytes()), purpose="fine-tune")
    job = wait_for_job(client, client.fine_tuning.jobs.create(training_file=broken.id, model="gpt-4.1-mini").id)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 4" in job.error.message and "no_assistant_message" in job.error.message


def test_a_dpo_job_needs_preference_data(server, trained):
    client = server.client()
    job = client.fine_tuning.jobs.create(training_file=trained["train_file"].id, model="gpt-4.1-mini",
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}})
    job = wait_for_job(client, job.id)
    assert job.status == "failed" and "preference examples" in job.error.message


# --- tenancy ---------------------------------------------------------------------------------------

def test_another_key_sees_none_of_it(server, trained):
    bob = server.client("key-bob")
    assert bob.files.list().data == []
    assert bob.fine_tuning.jobs.list().data == []
    assert trained["job"].fine_tuned_model not in [m.id for m in bob.models.list().data]
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(trained["train_file"].id)
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.retrieve(trained["job"].id)
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.list_events(trained["job"].id)
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model=trained["job"].fine_tuned_model, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        bob.models.delete(trained["job"].fine_tuned_model)
    with pytest.raises(openai.BadRequestError):  # a job on someone else's file
        bob.fine_tuning.jobs.create(training_file=trained["train_file"].id, model="gpt-4.1-mini")


# --- cancel, restart --------------------------------------------------------------------------------

def test_cancel_stops_a_job_between_steps(server, trained):
    client = server.client("key-cancel")
    file = client.files.create(file=("t.jsonl", head_lines(TRAIN, 40)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-nano", hyperparameters={"n_epochs": 5, "batch_size": 2})
    client.fine_tuning.jobs.cancel(job.id)
    job = wait_for_job(client, job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert any("cancelled" in e.message for e in client.fine_tuning.jobs.list_events(job.id).data)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_everything_survives_a_restart(tmp_path):
    first = ServerProcess(tmp_path / "data").start()
    client = first.client()
    file = client.files.create(file=("t.jsonl", head_lines(TRAIN, 10)), purpose="fine-tune")
    job = wait_for_job(client, client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-mini",
                                                              hyperparameters={"n_epochs": 1, "batch_size": 5}).id)
    assert job.status == "succeeded"
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "CBC"}], max_tokens=12)
    events = [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    first.stop()
    second = ServerProcess(tmp_path / "data").start()
    try:
        client = second.client()
        assert client.files.retrieve(file.id).bytes == file.bytes
        assert client.files.content(file.id).read() == head_lines(TRAIN, 10)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
        assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data] == events
        again = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "CBC"}], max_tokens=12)
        assert again.choices[0].message.content == reply.choices[0].message.content
    finally:
        second.stop()


def preference_rows(n: int) -> bytes:
    rows = []
    for i, line in enumerate(TRAIN.read_text().splitlines()[:n]):
        messages = json.loads(line)["messages"]
        rows.append({"input": {"messages": messages[:2]}, "preferred_output": [messages[2]],
                     "non_preferred_output": [{"role": "assistant", "content": f"I think it may be code {90000 + i}."}]})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_dpo_job_trains_and_serves(server):
    client = server.client("key-dpo")
    file = client.files.create(file=("pairs.jsonl", preference_rows(10)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4.1-mini", suffix="dpo",
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 5}}})
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data if e.type == "metrics"]
    assert len(metrics) == 2 and all(0 <= m["train_mean_token_accuracy"] <= 1 for m in metrics)
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "lipid panel"}], max_tokens=8)
    assert reply.choices[0].message.content


def first_step(client, job_id: str) -> dict:
    return next(e.data for e in reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data) if e.type == "metrics")


def test_a_job_can_start_from_a_fine_tuned_model(server, trained):
    """The job continues the trained model: on the same first batch (same file, same seed), its first loss is far
    below the first job's, which started from the base."""
    client = server.client()
    start = trained["job"].fine_tuned_model
    job = client.fine_tuning.jobs.create(training_file=trained["train_file"].id, model=start, suffix="more", seed=7,
                                         hyperparameters={"n_epochs": 1, "batch_size": BATCH})
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.model == start and job.fine_tuned_model.startswith("ft:gpt-4.1-mini:local:more:")
    assert first_step(client, job.id)["train_loss"] < 0.7 * first_step(client, trained["job"].id)["train_loss"]
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith(f"Starting from the fine-tuned model {start}") for m in events)


def test_dpo_from_a_fine_tuned_model_takes_that_model_as_its_reference(server, trained):
    """Before the first update the policy is the reference, so DPO's first loss is log 2, which it is only if the
    reference is the starting fine-tuned model (not the base)."""
    import math

    client = server.client()
    file = client.files.create(file=("pairs.jsonl", preference_rows(10)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model=trained["job"].fine_tuned_model, suffix="prefs",
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 1, "batch_size": 5}}})
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    # bf16 sums differ a little between the reference's batches and the step's (measured up to 0.05 nats a pair)
    assert abs(first_step(client, job.id)["train_loss"] - math.log(2)) < 0.02
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("Reference log-probabilities computed for 10 preference pairs") for m in events)
    assert "_dpo_reference" not in server.http("GET", f"/fine_tuning/jobs/{job.id}").text


def test_requests_that_arrive_together_are_batched(server):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    client = server.client("key-batch")
    prompts = [f"Say the number {i}." for i in range(6)]
    solo = [client.chat.completions.create(model="gpt-4.1-nano", messages=[{"role": "user", "content": p}], max_tokens=6)
            .choices[0].message.content for p in prompts]
    before = httpx.get(f"{server.url}/health").json()["inference"]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda p: client.chat.completions.create(
            model="gpt-4.1-nano", messages=[{"role": "user", "content": p}], max_tokens=6).choices[0].message.content, prompts))
    after = httpx.get(f"{server.url}/health").json()["inference"]
    assert after["requests"] - before["requests"] == 6
    assert after["batches"] - before["batches"] < 6 and after["largest_batch"] >= 2
    assert together == solo  # greedy: batching (left padding) does not change the answers


def test_workbook_export_takes_a_tuned_model_home_and_refuses_an_unknown_one(server, trained, tmp_path, monkeypatch):
    """``wind_down.export_model`` (notebook 10) asks the server's own tool, ``workbook export``, for the adapter: the
    course never reads the server's store itself."""
    from helpers.course import wind_down

    monkeypatch.setenv("WORKBOOK_SERVER_DIR", str(server.data_dir))
    monkeypatch.setenv("WORKBOOK_LOCAL_KEY", "key-alice")
    model = trained["job"].fine_tuned_model
    folder = wind_down.export_model(model, tmp_path / "home")
    assert {"adapter_config.json", "adapter_model.safetensors", "take_home.json", "README.md"} <= {p.name for p in folder.iterdir()}
    took = json.loads((folder / "take_home.json").read_text())
    loaded = httpx.get(f"{server.url}/health").json()["models"]
    # the precision the server answers in, so that transformers + peft at home compute what it computes
    assert took["model"] == model and took["dtype"] in {m["dtype"] for m in loaded} and f"torch.{took['dtype']}" in (folder / "README.md").read_text()
    monkeypatch.setenv("WORKBOOK_LOCAL_KEY", "key-bob")  # another key's model does not exist for you
    with pytest.raises(LookupError, match=r"^No fine-tuned model 'ft:.*' on the local server"):
        wind_down.export_model(model, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


# --- taking a model home: merged and GGUF (llama.cpp itself runs the GGUF) ------------------------------------

NEAR_TIE = 0.5  # logits: where llama.cpp's greedy answer parts from the server's, its token is the server's runner-up within this


def export(server, model: str, target, *arguments: str, key: str = "key-alice"):
    """``workbook export`` as a user runs it, against the test server's store."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "WORKBOOK_SERVER_DIR": str(server.data_dir), "WORKBOOK_LOCAL_KEY": key}
    return subprocess.run([sys.executable, "-m", "helpers.cli", "export", model, "--out", str(target), *arguments],
                          capture_output=True, text=True, timeout=1800, env=env)


@pytest.fixture(scope="module")
def held_out():
    rows = [json.loads(line) for line in (DATA / "billing" / "test.jsonl").read_text().splitlines()[:16]]
    return [row["messages"][:-1] for row in rows]


@pytest.fixture(scope="module")
def served(server, trained, held_out):
    """The server's greedy answers to the held-out requests (batched, as the notebooks ask)."""
    from helpers.course.sending import send_all

    client = server.client()
    return send_all(lambda m: client.chat.completions.create(model=trained["job"].fine_tuned_model, messages=m,
                                                             max_tokens=32, temperature=0).choices[0], held_out, 16)


@pytest.fixture(scope="module")
def gguf_export(server, trained, tmp_path_factory):
    """The trained model exported as GGUF at f16, q8_0 and q4_k_m (one folder each). That the adapter alone applies to
    the Q4_1 file the base came from, notebook 11 checks on 03's model (15 of 16 answers the server's)."""
    out = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        folder = tmp_path_factory.mktemp(f"gguf-{quant}")
        done = export(server, trained["job"].fine_tuned_model, folder, "--format", "gguf", "--quant", quant)
        assert done.returncode == 0, done.stderr
        out[quant] = folder
    return out


def split_gap(model, tokenizer, messages, ours: str, theirs: str) -> tuple[float, bool]:
    """Where two greedy answers part: the gap between the top two logits of the server's computation (transformers +
    peft in the server's precision) there, and whether the other answer's token is the runner-up."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    a = tokenizer(ours, add_special_tokens=False)["input_ids"]
    b = tokenizer(theirs, add_special_tokens=False)["input_ids"]
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] + a[:k]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, 2)
    other = b[k] if k < len(b) else tokenizer.eos_token_id
    return float(top.values[0] - top.values[1]), int(top.indices[1]) == other


def test_a_merged_export_is_a_plain_transformers_model_with_the_servers_answers(server, trained, held_out, served, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.pricing.catalogue import resolve_base
    from helpers.server.localmodels import compute_dtype, load_tokenizer

    done = export(server, trained["job"].fine_tuned_model, tmp_path / "merged", "--format", "merged")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "merged"
    names = {p.name for p in folder.iterdir()}
    assert "adapter_config.json" not in names and {"config.json", "model.safetensors", "generation_config.json", "take_home.json"} <= names
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == load_tokenizer(resolve_base("gpt-4.1-mini")).chat_template  # the template it was trained with
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>") and generation.get("do_sample") is False
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=compute_dtype()).eval()  # no peft
    answers = []
    for messages in held_out[:8]:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=32)  # its generation config: greedy, stops at <|im_end|>
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    same = sum(a == s.message.content for a, s in zip(answers, served))
    print("merged, plain transformers:", same, "of 8 the server's")
    assert same >= 7, list(zip(answers, [s.message.content for s in served[:8]]))


def test_a_gguf_export_runs_in_llama_cpp_and_answers_as_the_server(server, trained, held_out, served, gguf_export, tmp_path):
    from helpers.course import take_home, wind_down

    at_home = []  # the server's computation outside it (transformers + peft, its precision), loaded at the first difference
    same = {}
    for quant in ("f16", "q8_0"):
        took = json.loads((gguf_export[quant] / "take_home.json").read_text())
        meta = take_home.gguf_metadata(gguf_export[quant] / took["gguf"])
        assert meta["end-of-turn token"] == "<|im_end|>" and "<|im_start|>" in meta["chat template"]
        llm = take_home.load(gguf_export[quant] / took["gguf"])
        replies = [take_home.chat(llm, m, 32) for m in held_out]
        same[quant] = sum(r.text == s.message.content for r, s in zip(replies, served))
        for messages, choice, reply in zip(held_out, served, replies):
            ours = choice.message.content
            if reply.text == ours:  # and it ended as the server's did: at the end-of-turn token, or at max_tokens
                assert reply.finish_reason == choice.finish_reason, (ours, reply.finish_reason, choice.finish_reason)
                continue
            if not at_home:
                done = export(server, trained["job"].fine_tuned_model, tmp_path / "peft", "--format", "peft")
                assert done.returncode == 0, done.stderr
                at_home.extend(wind_down.load(tmp_path / "peft"))
            gap, runner_up = split_gap(*at_home, messages, ours, reply.text)
            print(f"{quant}: {ours!r} / llama.cpp {reply.text!r}: top two logits {gap:.3f} apart")
            assert gap < NEAR_TIE and runner_up, (quant, ours, reply.text, gap)  # a near-tie, not a wrong template or weights
    print("llama.cpp answers identical to the server's (of 16):", same)
    # This model trained for seconds: its answers are full of near-ties, which q8_0's rounding tips (measured: 6 of 16
    # identical, every difference within 0.17 of a logit); f16 keeps them. Notebook 11 checks 15 of 16 at both on the
    # course's model, whose answers are decided by wide margins.
    assert same["f16"] >= 15, same


def test_q4_k_m_is_reported_and_still_stops_in_form(held_out, served, gguf_export):
    from helpers.course import take_home

    took = json.loads((gguf_export["q4_k_m"] / "take_home.json").read_text())
    sizes = {q: (gguf_export[q] / json.loads((gguf_export[q] / "take_home.json").read_text())["gguf"]).stat().st_size for q in gguf_export}
    assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f16"], sizes
    replies = [take_home.chat(take_home.load(gguf_export["q4_k_m"] / took["gguf"]), m, 32) for m in held_out[:8]]
    print("q4_k_m:", sum(r.text == s.message.content for r, s in zip(replies, served)), "of 8 the server's; sizes MB",
          {q: round(b / 1e6) for q, b in sizes.items()})
    # a 4-bit file rounds more: reported, not required to match; it still ends its answers where the server's end
    assert sum(r.finish_reason == s.finish_reason for r, s in zip(replies, served)) >= 7


def test_the_modelfile_writes_the_chat_as_the_template_does(gguf_export, held_out):
    from helpers.pricing.catalogue import resolve_base
    from helpers.server.chat_template import turn_markers
    from helpers.server.export import ollama_template
    from helpers.server.localmodels import gguf_path, load_tokenizer

    tokenizer = load_tokenizer(resolve_base("gpt-4.1-mini"))
    markers = turn_markers(tokenizer)
    took = json.loads((gguf_export["f16"] / "take_home.json").read_text())
    assert took["base_gguf"] == str(gguf_path(resolve_base("gpt-4.1-mini")))  # the adapter's base: the shipped Q4_1 file itself
    merged = (gguf_export["f16"] / "Modelfile").read_text()
    adapter = (gguf_export["f16"] / "Modelfile.adapter").read_text()
    assert f"FROM ./{took['gguf']}" in merged and f"FROM {took['base_gguf']}\nADAPTER ./{took['adapter_gguf']}" in adapter
    for text in (merged, adapter):
        assert f'TEMPLATE """{ollama_template(markers)}"""' in text and 'PARAMETER stop "<|im_end|>"' in text
        assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    conversations = [*held_out[:4], [{"role": "user", "content": "CBC"}],
                     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]]
    for messages in conversations:  # the turns the Go template writes are the Jinja template's, turn for turn
        assert markers.render(messages) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_export_refuses_bad_input_in_one_line(server, trained, tmp_path):
    model = trained["job"].fine_tuned_model
    unknown = export(server, model + "x", tmp_path / "x", "--format", "gguf")
    assert unknown.returncode == 1 and unknown.stderr.startswith("workbook export: No fine-tuned model") and "Traceback" not in unknown.stderr
    assert not (tmp_path / "x").exists()
    wrong = export(server, model, tmp_path / "y", "--format", "onnx")
    assert wrong.returncode == 2 and "invalid choice: 'onnx'" in wrong.stderr


def test_an_export_replaces_an_earlier_one_whole_and_never_a_folder_of_other_files(server, trained, tmp_path):
    model = trained["job"].fine_tuned_model
    home = tmp_path / "home"
    assert export(server, model, home, "--format", "peft").returncode == 0
    (home / "gpt-4.1-mini-local-billing-OLD-f16.gguf").write_bytes(b"an earlier model's file")
    again = export(server, model, home, "--format", "peft")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in home.iterdir()) == sorted(["README.md", "adapter_config.json", "adapter_model.safetensors", "take_home.json"])
    # a failed export keeps the earlier one, and leaves nothing beside it
    assert export(server, model + "x", home, "--format", "peft").returncode == 1 and (home / "take_home.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = export(server, model, mine, "--format", "peft")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"workbook export: --out {mine} already holds files that are not an export (notes.txt)")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
