"""Models a user brings, through the real server over HTTP with the official client: ``workbook serve --model
NAME=FOLDER`` for tiny random-weight models of three other families (Llama 3, Qwen 2.5, Gemma 2: their real chat
templates), SmolLM2 under a template that is not ChatML, and SmolLM2's own folder under another name."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import openai
import pytest
from families import FAMILIES, build, retemplated_smollm2, smollm2_folder
from server_harness import ServerProcess, wait_for_job

from helpers.data.dataprep import read_jsonl
from helpers.paths import DATA_DIR

FORM = re.compile(r"^\S.* - CPT Code: \d{5}$")
LOOKUP = {"name": "lookup_cpt_code", "description": "Find a procedure's CPT code.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
REFUND = {"name": "issue_refund", "description": "Refund a payment.",
          "parameters": {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}}
TOOLS = [{"type": "function", "function": LOOKUP}, {"type": "function", "function": REFUND}]
TINY = {f"tiny-{name}": name for name in FAMILIES}
pytestmark = pytest.mark.usefixtures("fp32")  # its export is compared with the server in fp32 (conftest.fp32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("brought")
    flags = []
    for name, family in TINY.items():
        flags += ["--model", f"{name}={build(family, root / name)}"]
    flags += ["--model", f"smol-plain={retemplated_smollm2(root / 'smol-plain')}", "--model", f"smol={smollm2_folder()}"]
    process = ServerProcess(root / "data", *flags).start()
    yield process
    process.stop()


def billing(rows: list[dict], system: bool) -> list[dict]:
    """The course's examples; without the system message that states the form, the form can only be learned."""
    return [{"messages": [m for m in r["messages"] if system or m["role"] != "system"]} for r in rows]


def train(client, tmp_path, model: str, rows: list[dict], **hyperparameters):
    path = tmp_path / f"{model}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model=model, seed=7, hyperparameters=hyperparameters)
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", (job.error, [e.message for e in client.fine_tuning.jobs.list_events(job.id)])
    print(f"{model}: {len(rows)} examples, {job.hyperparameters.n_epochs} epoch(s), job {job.finished_at - job.created_at} s")
    return job


def losses(client, job_id: str) -> list[float]:
    events = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics"]
    return [e.data["train_loss"] for e in sorted(events, key=lambda e: e.data["step"])]


def test_brought_models_are_listed_under_their_names(server):
    names = {m.id for m in server.client().models.list()}
    assert {*TINY, "smol-plain", "smol", "gpt-4.1-mini"} <= names


@pytest.mark.parametrize("name", list(TINY))
def test_a_tiny_model_of_another_family_trains_stops_by_itself_and_calls_tools(server, tmp_path, name):
    client = server.client()
    plain = [{"messages": [{"role": "user", "content": f"Say OK to request {i}."}, {"role": "assistant", "content": "OK"}]}
             for i in range(12)]
    calls = [{"messages": [{"role": "system", "content": "You look codes up."}, {"role": "user", "content": f"Find the code of procedure {i}."},
                           {"role": "assistant", "content": None, "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {
                               "name": "lookup_cpt_code", "arguments": json.dumps({"query": f"procedure {i}"})}}]}],
              "tools": TOOLS} for i in range(12)]
    job = train(client, tmp_path, name, plain + calls, n_epochs=20, learning_rate_multiplier=3)
    assert job.fine_tuned_model.startswith(f"ft:{name}:")
    curve = losses(client, job.id)
    assert sum(curve[-4:]) / 4 < 0.5 * sum(curve[:4]) / 4, curve  # it learned
    # a tiny random model memorises rather than generalises: it is asked what it was trained on
    answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=20,
                                            messages=[{"role": "user", "content": "Say OK to request 5."}])
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == ("OK", "stop")  # ended by its end-of-turn token
    called = client.chat.completions.create(model=job.fine_tuned_model, tools=TOOLS, tool_choice="required", max_tokens=60,
                                            messages=[{"role": "system", "content": "You look codes up."},
                                                      {"role": "user", "content": "Find the code of procedure 5."}])
    call = called.choices[0].message.tool_calls[0]
    assert called.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup_cpt_code"  # the tool it was trained to call, of two
    assert isinstance(json.loads(call.function.arguments)["query"], str)


PLAIN_HELD_OUT = billing(read_jsonl(DATA_DIR / "billing" / "test.jsonl")[:8], system=False)


def plain_answers(client, model: str):
    return [client.chat.completions.create(model=model, max_tokens=40, messages=r["messages"][:-1]).choices[0] for r in PLAIN_HELD_OUT]


@pytest.fixture(scope="module")
def plain_job(server, tmp_path_factory):
    """SmolLM2 under the plain-text template, fine-tuned on the course's examples without the system message: its
    answers to the held-out requests before and after (in-process), and the job."""
    client = server.client()
    before = plain_answers(client, "smol-plain")
    rows = billing(read_jsonl(DATA_DIR / "billing" / "train.jsonl")[:48], system=False)
    job = train(client, tmp_path_factory.mktemp("plain"), "smol-plain", rows, n_epochs=2)
    return before, job, plain_answers(client, job.fine_tuned_model)


def test_smollm2_under_a_plain_text_template_learns_the_answer_form_and_stops(server, plain_job):
    before, job, after = plain_job
    print("smol-plain, held out:", [(c.message.content, c.finish_reason) for c in after])
    assert all(c.finish_reason == "stop" for c in after)  # it stops by itself, at <|endoftext|>
    assert sum(bool(FORM.match(c.message.content)) for c in after) >= 7
    assert sum(bool(FORM.match(c.message.content)) for c in before) <= 2


def test_a_model_tuned_under_a_brought_template_goes_home_with_that_template(server, plain_job, tmp_path):
    """Exported as GGUF, the model tuned on smol-plain carries smol-plain's template and end-of-turn token, not
    SmolLM2's own, and llama.cpp, writing the chat with it, gives the server's answers."""
    import os

    from families import PLAIN

    from helpers.course import take_home

    _, job, served = plain_job
    env = {**os.environ, "WORKBOOK_SERVER_DIR": str(server.data_dir), "WORKBOOK_LOCAL_KEY": "key-alice"}
    done = subprocess.run([sys.executable, "-m", "helpers.cli", "export", job.fine_tuned_model, "--format", "gguf", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr
    took = json.loads((tmp_path / "take_home.json").read_text())
    assert took["adapter_gguf"] is None  # a brought folder has no GGUF file the adapter could apply to
    meta = take_home.gguf_metadata(tmp_path / took["gguf"])
    assert meta["chat template"] == PLAIN and meta["end-of-turn token"] == "<|endoftext|>"
    modelfile = (tmp_path / "Modelfile").read_text()
    assert 'PARAMETER stop "<|endoftext|>"' in modelfile and "### Question:" in modelfile and "<|im_start|>" not in modelfile
    llm = take_home.load(tmp_path / took["gguf"])
    at_home = [take_home.chat(llm, r["messages"][:-1], 40) for r in PLAIN_HELD_OUT]
    print("smol-plain in llama.cpp:", [(r.text, r.finish_reason) for r in at_home])
    assert all(r.finish_reason == "stop" for r in at_home)
    assert sum(r.text == s.message.content for r, s in zip(at_home, served)) >= 7


def test_smollm2_brought_from_its_folder_trains_and_answers_like_the_default(server, tmp_path):
    client = server.client()
    rows = billing(read_jsonl(DATA_DIR / "billing" / "train.jsonl")[:16], system=True)  # 8 steps of 2
    held_out = billing(read_jsonl(DATA_DIR / "billing" / "test.jsonl")[:4], system=True)
    jobs = {model: train(client, tmp_path, model, rows, n_epochs=1) for model in ("smol", "gpt-4.1-mini")}
    curves = {model: losses(client, job.id) for model, job in jobs.items()}
    assert curves["smol"] == pytest.approx(curves["gpt-4.1-mini"], rel=0.02)
    answers = {model: [client.chat.completions.create(model=job.fine_tuned_model, max_tokens=40, messages=r["messages"][:-1])
                       .choices[0].message.content for r in held_out] for model, job in jobs.items()}
    print("smol vs gpt-4.1-mini, held out:", answers)
    assert answers["smol"] == answers["gpt-4.1-mini"]


def test_a_brought_model_and_its_adapter_answer_through_vllm_as_in_process(server, plain_job, tmp_path):
    """The same store served by ``--engine vllm --vllm-base smol-plain``: vLLM runs the brought folder, our server writes
    the prompt with that folder's own (plain-text, not ChatML) template and hands vLLM its token ids, and the model
    tuned on it answers through vLLM as the in-process engine answered (both fp32), text and finish. Models on another
    base are a 404 that names the flag. Last in this module: it stops the in-process server (one server on a store)."""
    _, job, served = plain_job
    flags = ["--model", f"smol-plain={brought_folder(server, 'smol-plain')}", "--engine", "vllm", "--vllm-base", "smol-plain"]
    server.stop()
    through = ServerProcess(server.data_dir, *flags).start(timeout_s=900)
    try:
        client = through.client()
        after = plain_answers(client, job.fine_tuned_model)
        print("smol-plain's tuned model through vLLM:", [(c.message.content, c.finish_reason) for c in after])
        assert [(c.message.content, c.finish_reason) for c in after] == [(c.message.content, c.finish_reason) for c in served]
        assert all(c.finish_reason == "stop" for c in after)  # it stops at the brought template's <|endoftext|>
        with pytest.raises(openai.NotFoundError, match="--vllm-base"):
            client.chat.completions.create(model="gpt-4.1-mini", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    finally:
        through.stop()


def brought_folder(server, name: str):
    """The folder a model of the module's server was brought from (its ``--model NAME=FOLDER`` flag)."""
    flag = next(value for value in server.extra if value.startswith(f"{name}="))
    return flag.split("=", 1)[1]


def test_check_device_proves_a_machine_end_to_end_and_says_what_failed(tmp_path):
    folder = build("llama3", tmp_path / "tiny")
    command = [sys.executable, "-m", "helpers.cli", "check-device", "--model", f"tiny={folder}", "--examples", "16", "--requests", "4"]
    done = subprocess.run([*command, "--base", "tiny"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert re.search(r"training: 16 examples x 1 epoch\(s\) on tiny: [\d.]+ s, [\d,]+ trained tokens", done.stdout)
    assert re.search(r"answers: 4 held-out requests at once in [\d.]+ s, \d+ tokens, [\d.]+ tokens/s", done.stdout)
    assert re.search(r"device: cpu, dtype (float32|bfloat16); peak memory: \d+ MiB resident", done.stdout)
    assert done.stdout.rstrip().endswith("workbook check-device: ok")
    refused = subprocess.run([*command, "--base", "nonesuch"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert "workbook check-device: FAILED: the server answered 400 Model 'nonesuch' is not available" in refused.stderr
    assert "Traceback" not in refused.stderr
