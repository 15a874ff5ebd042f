"""Reinforcement fine-tuning through the real server with the official client: a ``reinforcement`` job with a
``string_check`` grader trains SmolLM2 by GRPO, and its mean reward rises; what it reports per step, its checkpoints,
and the files it refuses."""
from __future__ import annotations

import json
import statistics

import httpx
import openai
import pytest
from conftest import DATA
from server_harness import ServerProcess, wait_for_job

ROWS = [json.loads(line) for line in (DATA / "billing" / "train.jsonl").read_text().splitlines()]
#: the course's form, which SmolLM2-135M writes now and then before any training (measured: 5 answers in 16 at
#: temperature 0.7): a reward a group of answers can tell apart ("ilike": the answer holds it, in any case)
FORM = {"type": "string_check", "name": "form", "input": "{{ sample.output_text }}", "reference": "CPT Code", "operation": "ilike"}
EPOCHS, BATCH = 2, 4


def prompts(rows: list[dict]) -> bytes:
    """Prompt rows as OpenAI's reinforcement fine-tuning takes them: the conversation up to the user's turn, and the
    fields the grader reads (here the expected answer)."""
    return "".join(json.dumps({"messages": r["messages"][:-1], "answer": r["messages"][-1]["content"]}) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("reinforcement") / "data").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def job(server):
    client = server.client()
    train = client.files.create(file=("prompts.jsonl", prompts(ROWS[:16])), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", prompts(ROWS[-4:])), purpose="fine-tune")
    created = client.fine_tuning.jobs.create(
        training_file=train.id, validation_file=valid.id, model="gpt-4.1-mini", seed=7, suffix="form",
        method={"type": "reinforcement", "reinforcement": {"grader": FORM, "hyperparameters": {
            "n_epochs": EPOCHS, "batch_size": BATCH, "eval_interval": 4, "eval_samples": 2}}})  # 8 steps
    return wait_for_job(client, created.id, timeout_s=1200)


def test_a_reinforcement_job_raises_its_mean_reward(server, job):
    client = server.client()
    assert job.status == "succeeded", job.error
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "form"
    hyper = job.method.reinforcement.hyperparameters
    assert (hyper.n_epochs, hyper.batch_size, hyper.compute_multiplier, hyper.reasoning_effort) == (EPOCHS, BATCH, 1.0, "default")
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = sorted((e.data for e in events if e.type == "metrics"), key=lambda m: m["step"])
    rewards = [m["train_reward_mean"] for m in steps]
    print("mean reward by step:", [round(r, 2) for r in rewards], "validation:",
          [(m["step"], m["valid_reward_mean"]) for m in steps if "valid_reward_mean" in m])
    assert len(steps) == EPOCHS * 16 // BATCH and all(m["train_grader_failures"] == 0 for m in steps)
    assert statistics.fmean(rewards[-3:]) > statistics.fmean(rewards[:3]) + 0.2, rewards
    assert [m["step"] for m in steps if "valid_reward_mean" in m] == [4, 8]  # every eval_interval steps
    assert all(m["train_answer_tokens_mean"] > 0 and m["train_kl"] >= 0 for m in steps)
    assert any("mean reward=" in e.message for e in events)
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [8, 4]  # one per epoch


def test_a_reinforcement_job_on_chat_examples_fails_naming_the_format(server):
    client = server.client()
    chat = client.files.create(file=("chat.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS[:10]).encode()), purpose="fine-tune")
    job = wait_for_job(client, client.fine_tuning.jobs.create(training_file=chat.id, model="gpt-4.1-mini", method={
        "type": "reinforcement", "reinforcement": {"grader": FORM}}).id)
    assert job.status == "failed" and job.error.param == "training_file"
    assert "A reinforcement job needs prompt examples" in job.error.message


def test_a_job_from_a_fine_tuned_model_is_held_near_that_model_not_the_base(server, job):
    """The KL term compares with the model a job starts from: at the first step, before any update, the policy is that
    model, so the KL is 0 (measured). Against the base it was 0.15 for this start, and about 2 per token from 03's model."""
    client = server.client()
    train = client.files.create(file=("few.jsonl", prompts(ROWS[16:26])), purpose="fine-tune")
    again = wait_for_job(client, client.fine_tuning.jobs.create(
        training_file=train.id, model=job.fine_tuned_model, seed=7, method={"type": "reinforcement", "reinforcement": {
            "grader": FORM, "hyperparameters": {"n_epochs": 1, "batch_size": 5}}}).id, timeout_s=600)  # 2 steps
    assert again.status == "succeeded", again.error
    events = client.fine_tuning.jobs.list_events(again.id, limit=100).data
    first = min((e.data for e in events if e.type == "metrics"), key=lambda m: m["step"])
    print("KL to the starting model at step 1:", first["train_kl"])
    assert first["train_kl"] < 0.01, first
    assert any(f"compares with {job.fine_tuned_model}" in e.message for e in events)
    # the frozen copy left with the job
    loaded = httpx.get(f"{server.url}/health", timeout=10).json()["models"][0]
    assert loaded["training_adapters"] == loaded["reference_adapters"] == 0, loaded


def test_a_model_grader_answers_through_the_engine_and_on_the_jobs_own_copy_while_it_trains(server, job):
    """Model graders on the base: ``graders.run`` asks through the inference engine; a job asks on the job's own copy
    of the base, between sampling and the update (the adapter off, then the one that trains active again, beside the
    frozen copy of the fine-tuned model the job starts from). An answer that is not a label or a number in range fails
    the sample, with an event that says what the model answered."""
    client = server.client()
    asked = [{"role": "system", "content": "Reply with one word: yes or no."},
             {"role": "user", "content": "Does this answer name a CPT code? {{ sample.output_text }}"}]
    judge = {"type": "label_model", "name": "judge", "model": "gpt-4.1-mini", "labels": ["yes", "no"], "passing_labels": ["yes"], "input": asked}
    both = {"type": "multi", "name": "both", "graders": {"form": FORM, "judge": judge}, "calculate_output": "0.5 * form + 0.5 * judge"}
    ran = client.fine_tuning.alpha.graders.run(grader=both, model_sample="Lipid panel - CPT Code: 80061", item={})
    print("graders.run:", ran.sub_rewards, "parse error:", ran.metadata.errors.api_model_grader_parse_error)
    assert ran.sub_rewards["form"] == 1.0 and ran.sub_rewards["judge"] in (0.0, 1.0)
    assert ran.reward == 0.5 * 1.0 + 0.5 * ran.sub_rewards["judge"]
    score = {"type": "score_model", "name": "score", "model": "gpt-4.1-mini", "sampling_params": {"max_completions_tokens": 4}, "input": [
        {"role": "system", "content": "Rate from 0 to 1 how surely the answer names a CPT code. Reply with the number only."},
        {"role": "user", "content": "{{ sample.output_text }}"}]}
    train = client.files.create(file=("judged.jsonl", prompts(ROWS[26:36])), purpose="fine-tune")
    judged = wait_for_job(client, client.fine_tuning.jobs.create(
        training_file=train.id, model=job.fine_tuned_model, seed=7, method={"type": "reinforcement", "reinforcement": {
            "grader": score, "hyperparameters": {"n_epochs": 1, "batch_size": 10, "compute_multiplier": 0.5}}}).id,
        timeout_s=600)  # 1 step, 20 answers
    assert judged.status == "succeeded", judged.error
    events = client.fine_tuning.jobs.list_events(judged.id, limit=100).data
    messages = [e.message for e in events]
    print("\n".join(reversed(messages)))
    assert any("The grader asks gpt-4.1-mini" in m for m in messages)
    step = next(e.data for e in events if e.type == "metrics")
    said = [m for m in messages if m.startswith("The grader failed on")]
    assert bool(said) == (step["train_grader_failures"] > 0)  # a failure is told, with what the model answered
    assert all("gpt-4.1-mini answered" in m and "holds no number from 0 to 1" in m for m in said)
    assert 0 <= step["train_reward_mean"] <= 1
    assert step["train_kl"] < 0.01  # compared with the frozen start, not with the judge's base (about 0.15 from this start)
    loaded = httpx.get(f"{server.url}/health", timeout=10).json()["models"][0]
    assert loaded["training_adapters"] == loaded["reference_adapters"] == 0, loaded
    with pytest.raises(openai.BadRequestError) as raised:  # the job's grader asks a model the caller does not have
        client.fine_tuning.jobs.create(training_file=train.id, model="gpt-4.1-mini", method={"type": "reinforcement", "reinforcement": {
            "grader": {**score, "model": "ft:gpt-4.1-mini:local:nobody:x"}}})
    assert raised.value.param == "method.reinforcement.grader.model"
