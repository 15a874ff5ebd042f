"""Training methods as plug-ins (``helpers.server.methods``), on the real SmolLM2 and its chat template, without a
server: each encodes its examples with the model's template and takes a real step through the training loop's own
code; the job runner and the loop only ask the method."""
from __future__ import annotations

import json
import math

import pytest
from conftest import DATA

from helpers.pricing.catalogue import default_local_base
from helpers.server import localmodels, training
from helpers.server.chat_template import IGNORE
from helpers.server.methods import METHODS, Preparation
from helpers.server.records import JobRecord
from helpers.server.shared import SharedModels

ADAPTER = "train_methods"

CHAT = [json.loads(line) for line in (DATA / "billing" / "train.jsonl").read_text().splitlines()[:4]]
PAIRS = [{"input": {"messages": row["messages"][:-1]}, "preferred_output": [row["messages"][-1]],
          "non_preferred_output": [{"role": "assistant", "content": "I am not sure."}]} for row in CHAT]
PROMPTS = [{"messages": row["messages"][:-1], "answer": row["messages"][-1]["content"]} for row in CHAT]
#: how close an answer is to the course's: a score that differs between any two answers, so every group teaches
CLOSE_GRADER = {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
                "evaluation_metric": "fuzzy_match"}


@pytest.fixture(scope="module")
def chat():
    return localmodels.load_chat(default_local_base())


@pytest.fixture(scope="module")
def shared():
    """The server's shared base model with a training adapter on it, as a job has it."""
    model = SharedModels(1).get(default_local_base())
    with model.hold():
        model.add_training_adapter(ADAPTER, training.TrainSettings(seed=0))
    return model


def test_supervised_learns_only_the_assistants_turn_and_its_end(chat):
    method = METHODS["supervised"]
    examples, skipped = method.encode_file(chat, CHAT, training.MAX_SEQ_LEN)
    assert skipped == 0 and len(examples) == len(CHAT)
    ids, labels = examples[0]
    learned = [token for token, label in zip(ids, labels) if label != IGNORE]
    assert chat.tokenizer.decode(learned).strip() == CHAT[0]["messages"][-1]["content"] + "<|im_end|>"
    assert method.length(examples[0]) == len(ids)
    few, skipped = method.encode_file(chat, CHAT, max_len=min(len(e[0]) for e in examples))
    assert skipped == len(CHAT) - len(few) >= 1  # what is longer than the window is left out, and counted


def test_dpo_encodes_both_outputs_as_the_template_ends_a_turn(chat):
    method = METHODS["dpo"]
    (pair, *_), skipped = method.encode_file(chat, PAIRS, training.MAX_SEQ_LEN)
    assert skipped == 0
    assert chat.tokenizer.decode(pair["chosen"]) == PAIRS[0]["preferred_output"][0]["content"] + "<|im_end|>"
    assert chat.tokenizer.decode(pair["rejected"]) == "I am not sure.<|im_end|>"
    assert method.length(pair) == len(pair["prompt"]) + max(len(pair["chosen"]), len(pair["rejected"]))


def test_each_methods_step_puts_gradients_on_the_adapter_only(chat, shared):
    """A real step of each method through the shared model, as a job takes it (DPO's reference prepared first); in
    bf16 the reference's batches and the step's sum a little differently (up to 0.05 nats a pair, test_server)."""
    from helpers.server.graders import Sandbox, check
    from helpers.server.methods.reinforcement import Grading

    pad_id = training.padding_id(chat.tokenizer)
    grading = Grading(check(CLOSE_GRADER), Sandbox(), sorted(chat.stop_ids), lambda ids: chat.tokenizer.decode(ids, skip_special_tokens=True))
    settings = training.TrainSettings(method="dpo", beta=0.1, grading=grading)
    for name, rows in (("supervised", CHAT), ("dpo", PAIRS), ("reinforcement", PROMPTS)):
        method = METHODS[name]
        batch, _ = method.encode_file(chat, rows, training.MAX_SEQ_LEN)
        kept: dict = {}
        method.prepare(Preparation(job=JobRecord.model_construct(dpo_reference=None), examples=batch, shared=shared, adapter=ADAPTER,
                                   cancelled=lambda: False, event=lambda message: None, keep=kept.update))
        assert (len(kept.get("dpo_reference") or []) == len(batch)) == (name == "dpo")  # only DPO prepares: its reference
        with shared.training_turn(ADAPTER):
            model = shared.peft
            model.train()
            model.zero_grad(set_to_none=True)
            stepped = method.step(model, batch, settings, pad_id, localmodels.default_device())
            loss, accuracy = stepped.loss, stepped.accuracy
            trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert not loss.requires_grad and 0 <= accuracy <= 1
        assert trained and all("lora_" in n for n in trained), name
        if name == "dpo":  # before any update the policy is its reference: the loss is log 2
            assert float(loss) == pytest.approx(math.log(2), abs=0.03)
        if name == "reinforcement":  # a group of 4 answers to each prompt, graded; before any update the KL is 0
            reported = stepped.reported
            assert reported["train_reward_mean"] == accuracy and 0 < reported["train_answer_tokens_mean"] <= 48
            assert reported["train_grader_failures"] == 0 and reported["train_kl"] == pytest.approx(0, abs=1e-3)
