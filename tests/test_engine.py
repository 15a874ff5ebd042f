"""The engine's parts that need no server: precision choice, the fair lock, length-grouped batches, batches in parts."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from helpers.server import localmodels
from helpers.server.shared import FairLock
from helpers.server.training import length_grouped_batches


def test_precision_is_bf16_where_the_cpu_has_bf16_kernels_and_can_be_forced(monkeypatch):
    monkeypatch.delenv("WORKBOOK_PRECISION", raising=False)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert localmodels.compute_dtype("cpu") == (torch.bfloat16 if native else torch.float32)
    monkeypatch.setenv("WORKBOOK_PRECISION", "fp32")
    assert localmodels.compute_dtype("cpu") == torch.float32
    monkeypatch.setenv("WORKBOOK_PRECISION", "BF16")
    if native:
        assert localmodels.compute_dtype("cpu") == torch.bfloat16
    else:
        with pytest.raises(RuntimeError, match="no bf16 kernels"):
            localmodels.compute_dtype("cpu")


def test_an_unknown_precision_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORKBOOK_PRECISION", "half")
    with pytest.raises(ValueError, match="WORKBOOK_PRECISION must be one of auto, bf16, fp32, got 'half'"):
        localmodels.compute_dtype("cpu")


def test_the_fair_lock_serves_threads_in_the_order_they_asked():
    hold, order = FairLock(), []
    started = threading.Event()

    def trainer() -> None:  # releases and asks again at once, as a training loop does
        for step in range(5):
            with hold():
                started.set()
                order.append(f"step {step}")
                time.sleep(0.02)

    thread = threading.Thread(target=trainer)
    thread.start()
    started.wait()
    with hold():  # a chat request arriving mid-training gets the next turn, not the end of the job
        order.append("chat")
    thread.join()
    assert order.index("chat") <= 2, order


def test_length_grouped_batches_hold_every_example_once_and_pad_little():
    import random

    lengths = [random.Random(i).randint(60, 200) for i in range(333)]
    batches = length_grouped_batches(lengths, 4, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(333))
    assert all(1 <= len(b) <= 4 for b in batches)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    plain = sum(max(lengths[i] for i in range(j, min(j + 4, 333))) * len(range(j, min(j + 4, 333))) for j in range(0, 333, 4))
    assert padded < plain * 0.9
    assert length_grouped_batches(lengths, 4, seed=3) == batches and length_grouped_batches(lengths, 4, seed=4) != batches
    # the batches themselves are shuffled: lengths do not trend through an epoch
    assert [max(lengths[i] for i in b) for b in batches] != sorted(max(lengths[i] for i in b) for b in batches)


def test_a_long_batch_trains_in_parts_with_the_gradients_of_one_pass():
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.server.training import IGNORE, accumulate_gradients, micro_batches

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).float()
    rng = torch.Generator().manual_seed(1)
    batch = []
    for length in (9, 30, 17, 40):  # labels: the second half of each example
        ids = torch.randint(0, 64, (length,), generator=rng).tolist()
        batch.append((ids, [IGNORE] * (length // 2) + ids[length // 2:]))
    # shortest first, padded to multiples of 16: 9 and 17 fit in 2 x 32 tokens, 30 with them would need 3 x 32
    assert [[len(ids) for ids, _ in part] for part in micro_batches(batch, 64)] == [[9, 17], [30], [40]]

    def gradients(max_tokens: int):
        model.zero_grad()
        loss, accuracy = accumulate_gradients(model, batch, 0, "cpu", max_tokens=max_tokens)
        return loss, accuracy, [p.grad.clone() for p in model.parameters()]

    whole_loss, whole_accuracy, whole = gradients(10_000)
    parts_loss, parts_accuracy, parts = gradients(64)
    assert torch.allclose(parts_loss, whole_loss, atol=1e-6)
    assert parts_accuracy == pytest.approx(whole_accuracy)
    for a, b in zip(parts, whole):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_torch_work_runs_in_a_thread_of_its_own_and_its_errors_reach_the_caller():
    from helpers.server.shared import in_own_thread

    caller = threading.get_ident()
    assert in_own_thread(lambda: threading.get_ident(), "probe") != caller
    assert in_own_thread(lambda: 6 * 7, "probe") == 42
    with pytest.raises(ZeroDivisionError):
        in_own_thread(lambda: 1 / 0, "probe")


def test_the_lean_lora_forward_gives_peft_s_outputs_and_gradients():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.server import lora_forward

    def tiny(seed: int):
        torch.manual_seed(seed)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2)).float()
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        model = get_peft_model(base, config, adapter_name="one")
        model.add_adapter("two", config)
        for name, p in model.named_parameters():  # B starts at zero; make both adapters change the outputs
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        return model

    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    peft_model, lean_model = tiny(0), tiny(0)
    assert lora_forward.install(lean_model) == 6 and lora_forward.install(lean_model) == 6  # idempotent
    assert sum("forward" in m.__dict__ for m in lean_model.modules()) == 6

    def run(model, adapter: str | None):
        model.zero_grad()
        if adapter is None:
            with model.disable_adapter():
                return model(input_ids=ids).logits, None
        model.set_adapter(adapter)
        logits = model(input_ids=ids).logits
        logits.square().mean().backward()
        return logits, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    outputs = {}
    for adapter in ("one", "two", None):
        (want, want_grads), (got, got_grads) = run(peft_model, adapter), run(lean_model, adapter)
        assert torch.allclose(got, want, atol=1e-5), adapter
        for a, b in zip(got_grads or [], want_grads or []):
            assert torch.allclose(a, b, atol=1e-5), adapter
        outputs[adapter] = got
    assert not torch.allclose(outputs["one"], outputs["two"]) and not torch.allclose(outputs["one"], outputs[None])


def test_a_shared_prefix_goes_through_the_model_once_with_the_same_loss_and_gradients():
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.server.training import IGNORE, collate, loss_and_accuracy, shared_prefix_length

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).float()
    rng = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, 64, (12,), generator=rng).tolist()
    batch = []
    for prompt, answer in ((3, 5), (9, 2), (1, 7)):  # a shared system prompt, a user part, a labelled answer
        rest = torch.randint(0, 64, (prompt + answer,), generator=rng).tolist()
        batch.append((prefix + rest, [IGNORE] * (12 + prompt) + rest[prompt:]))
    # the third example's answer starts at token 13: token 13 is predicted from position 12, so 12 tokens are shared
    assert shared_prefix_length(batch) == 12
    assert shared_prefix_length(batch[:1]) == 0  # one example: nothing to share
    assert shared_prefix_length([(prefix[:5] + [1] * 9, [IGNORE] * 13 + [1]), (prefix[:5] + [2] * 9, [IGNORE] * 13 + [2])]) == 0  # too short to pay

    def run(prefix_len: int):
        model.zero_grad()
        loss, accuracy, count = loss_and_accuracy(model, collate(batch, 0, "cpu", prefix_len))
        loss.backward()
        return loss.detach(), accuracy, count, [p.grad.clone() for p in model.parameters()]

    shared, whole = run(12), run(0)
    assert shared[2] == whole[2] == 14  # every labelled token, and only those
    assert torch.allclose(shared[0], whole[0], atol=1e-6) and shared[1] == pytest.approx(whole[1])
    for a, b in zip(shared[3], whole[3]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
