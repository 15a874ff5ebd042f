"""The engine's parts that need no server: precision choice, the fair lock, length-grouped batches, batches in parts."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from helpers.pricing import catalogue
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


def test_lora_plus_gives_the_b_matrices_a_larger_learning_rate():
    from types import SimpleNamespace

    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.server.training import IGNORE, TrainSettings, train

    def first_step(ratio: float) -> tuple[float, float]:
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2)).float()
        settings = TrainSettings(n_epochs=1, batch_size=2, lora_r=4, lora_alpha=8, lora_b_lr_ratio=ratio)
        model = get_peft_model(base, settings.lora_config(base))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        examples = [(list(range(1, 11)), [IGNORE] * 5 + list(range(6, 11))), (list(range(3, 13)), [IGNORE] * 5 + list(range(8, 13)))]
        train(model, SimpleNamespace(pad_token_id=0, eos_token_id=0), examples, [], settings, on_step=lambda m: None,
              on_epoch_end=lambda *a: None, should_stop=lambda: False)
        moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters() if p.requires_grad}
        return max(v for n, v in moved.items() if "lora_B" in n), max(v for n, v in moved.items() if "lora_A" in n)

    plain_b, plain_a = first_step(1.0)
    plus_b, plus_a = first_step(4.0)
    # B starts at zero, so only B moves in the first step, and Adam's first step is the learning rate itself
    assert plain_a == plus_a == 0.0
    assert plain_b == pytest.approx(TrainSettings().learning_rate, rel=1e-3)
    assert plus_b == pytest.approx(4 * plain_b, rel=1e-3)


def test_neftune_noises_the_embeddings_of_training_passes_only_and_within_its_bound():
    import math

    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.server.training import neftune

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).float()
    embeddings = model.get_input_embeddings()
    ids = torch.randint(0, 64, (2, 10))
    clean = embeddings(ids).detach()
    bound = 5.0 / math.sqrt(10 * 32)
    with neftune(model, 5.0):
        model.train()
        noise = embeddings(ids).detach() - clean
        assert float(noise.abs().max()) <= bound + 1e-6
        assert float(noise.abs().max()) > bound / 2 and float(noise.abs().mean()) > bound / 4  # uniform in [-b, b]
        with torch.no_grad():  # answers between steps, and validation, see the clean embeddings
            assert torch.equal(embeddings(ids), clean)
        model.eval()
        assert torch.equal(embeddings(ids).detach(), clean)
    model.train()
    assert torch.equal(embeddings(ids).detach(), clean)  # the hook is gone after training


def test_the_base_answers_as_the_base_after_adapters_come_and_go(tmp_path):
    """Regression: peft activates a remaining adapter when one is deleted; the base must still answer with adapters
    off (a base request after a job ended was answered with another model's adapter)."""
    from helpers.server.shared import SharedModel
    from helpers.server.training import TrainSettings

    base = catalogue.default_local_base()
    shared = SharedModel(base)
    ids = shared.tokenizer("Pt seen today for a lipid panel.", return_tensors="pt")["input_ids"]

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).logits[0, -1].float()

    with shared.hold():
        plain = logits(shared.for_inference(None))
        model = shared.add_training_adapter("first", TrainSettings(seed=1))
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "lora_B" in name and ".first." in name:
                    weight.add_(0.05)  # B starts at zero: make the adapter change the answer
        shared.save_adapter("first", tmp_path / "first")
        shared.remove_training_adapter("first")
        tuned = logits(shared.for_inference(tmp_path / "first"))
        assert not torch.allclose(tuned, plain, atol=1e-3)
        shared.add_training_adapter("second", TrainSettings(seed=2))
        shared.remove_training_adapter("second")  # peft now makes the inference adapter active again
        assert torch.allclose(logits(shared.for_inference(None)), plain, atol=1e-4)
        assert torch.allclose(logits(shared.for_inference(tmp_path / "first")), tuned, atol=1e-4)


def test_the_shared_model_generates_with_sdpa_and_trains_with_eager_to_the_same_answers():
    """Each use runs the attention kernel measured fastest for it (benchmarks/RESULTS.md); both compute the same
    model, so the switch changes speed, not answers."""
    from helpers.server.shared import INFERENCE_ATTENTION, TRAINING_ATTENTION, SharedModel
    from helpers.server.training import TrainSettings, autocast

    shared = SharedModel(catalogue.default_local_base())
    ids = shared.tokenizer("Pt seen today for a lipid panel.", return_tensors="pt")["input_ids"]
    with shared.hold(), torch.no_grad():
        generating = shared.for_inference(None)(input_ids=ids).logits[0, -1].float()
        assert shared.model.config._attn_implementation == INFERENCE_ATTENTION == "sdpa"
        shared.add_training_adapter("job", TrainSettings(seed=1))
        assert shared.model.config._attn_implementation == TRAINING_ATTENTION == "eager"
        with autocast(shared.peft):  # as a training step runs (fp32 adapters, bf16 base)
            training = shared.peft(input_ids=ids).logits[0, -1].float()  # a new adapter's B is zero: the base's answer
        shared.for_inference(None)
    with shared.training_turn("job"):
        assert shared.model.config._attn_implementation == TRAINING_ATTENTION
    assert int(generating.argmax()) == int(training.argmax())
    assert torch.equal(generating.topk(5).indices, training.topk(5).indices)
    assert float((generating - training).abs().max()) < 0.02 * float(generating.abs().max()), (generating - training).abs().max()


def test_generation_gives_the_output_layer_a_contiguous_input_once_the_weights_are_frozen(tmp_path):
    """Regression: with the weights frozen (as peft leaves them), torch's matmul copied the 49k-token output weight
    once per sequence when generation's first pass handed the output layer a strided slice (1.4 s for 16 prompts,
    against 6 ms: benchmarks/RESULTS.md). The answers are those of a contiguous input."""
    from helpers.server.shared import SharedModel
    from helpers.server.training import TrainSettings

    shared = SharedModel(catalogue.default_local_base())
    seen: list[bool] = []
    shared.model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    prompts = shared.tokenizer(["Pt seen today for a lipid panel.", "Flu shot, left arm."], return_tensors="pt", padding=True)
    with shared.hold(), torch.no_grad():
        shared.add_training_adapter("job", TrainSettings(seed=1))
        shared.save_adapter("job", tmp_path / "job")
        shared.remove_training_adapter("job")
        model = shared.for_inference(tmp_path / "job")
        assert not shared.model.get_output_embeddings().weight.requires_grad
        output = model.generate(**prompts, max_new_tokens=3, do_sample=False, pad_token_id=shared.tokenizer.eos_token_id)
    assert output.shape[1] > prompts["input_ids"].shape[1] and seen and all(seen)
