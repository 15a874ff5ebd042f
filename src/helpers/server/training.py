"""Fine-tuning a local model for real: supervised LoRA and DPO, on the CPU or a GPU.

Labels are built from the model's own chat template: the loss covers the content of assistant messages
with weight 1 and the ``<|im_end|>`` that closes them (so the model learns to stop), nothing else. Labels
are never derived from the pad id, because pad == eos for SmolLM2. Batches hold examples of similar length
(length-grouped, then shuffled) and are padded dynamically to their longest example, rounded up to a
multiple of PAD_TO_MULTIPLE; a batch longer than MAX_TOKENS_PER_PASS padded tokens goes forward and backward in
parts whose gradients add up to the batch's (the same update, less memory).

Precision: the frozen base weights are in the compute dtype of ``localmodels.compute_dtype()`` (bf16 where
the CPU has bf16 kernels) and the forward pass runs under autocast; the LoRA weights, their gradients and
AdamW's state stay in fp32, and the loss is computed in fp32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from helpers.server.chat_template import IGNORE

#: LoRA's targets unless a sweep names some: every linear layer of the decoder (peft finds them in the model: attention
#: and MLP projections, whatever a family calls them), never the output layer.
ALL_LINEAR = "all-linear"
BASE_LEARNING_RATE = 2e-3  # times learning_rate_multiplier (LoRA); "auto" multipliers: helpers.server.jobs
MAX_SEQ_LEN = 1024
MEGABATCH = 16  # length grouping: examples are sorted by length within runs of MEGABATCH batches


@dataclass
class TrainSettings:
    method: str = "supervised"          # a name in helpers.server.methods.METHODS
    n_epochs: int = 3
    batch_size: int = 4
    learning_rate_multiplier: float = 1.0
    beta: float = 0.1                   # DPO's
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None  # None: ALL_LINEAR
    eval_every: int = 10                # steps between validation-batch losses
    lora_b_lr_ratio: float = 1.0        # LoRA+ (Hayou et al., 2024): B learns this many times faster (sweep only)
    neftune_alpha: float = 5.0          # NEFTune (Jain et al., 2023): noise on the input embeddings while training (supervised)
    lora_top_layers: int = 0            # adapt only the top N decoder layers, 0 = all (sweep only): backward stops below them
    grading: Any = None                 # a reinforcement job's (helpers.server.methods.reinforcement.Grading)

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier

    def lora_config(self, model):
        """The adapter for ``model``: its targets and layer count read from the model itself."""
        from peft import LoraConfig

        layers = _causal_lm(model).config.get_text_config().num_hidden_layers
        top = {"layers_to_transform": list(range(layers - self.lora_top_layers, layers)), "layers_pattern": "layers"} if self.lora_top_layers else {}
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=list(self.lora_targets) if self.lora_targets else ALL_LINEAR, task_type="CAUSAL_LM", **top)


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    train_loss: float
    train_mean_token_accuracy: float
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    # a reinforcement job's (helpers.server.methods.reinforcement): its answers' mean reward, length, grader failures, KL
    train_reward_mean: float | None = None
    train_answer_tokens_mean: float | None = None
    train_grader_failures: int | None = None
    train_kl: float | None = None
    valid_reward_mean: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Cancelled(Exception):
    """Raised between steps when the job was cancelled."""


PAD_TO_MULTIPLE = 16  # fewer distinct shapes: oneDNN compiles and caches a matmul kernel per shape
# Padded tokens in one forward/backward pass. Activations kept for backward cost about 1 MB per token here, so this
# bounds a job's memory; measured on the course set (333 examples, 1 epoch, in-process): no limit 92.9 s and
# 2,180 MB peak, 512 tokens 94.2 s / 1,780 MB, 384 tokens 89.5 s / 1,664 MB, 256 tokens 103.7 s / 1,330 MB.
MAX_TOKENS_PER_PASS = 384


def padded_width(batch: list[tuple[list[int], list[int]]]) -> int:
    return -(-max(len(ids) for ids, _ in batch) // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE


def micro_batches(batch: list[tuple[list[int], list[int]]], max_tokens: int) -> list[list]:
    """Split a batch into passes of at most ``max_tokens`` padded tokens (one example at least), shortest first, so
    that a batch of long examples does not hold all their activations at once; gradients add up to the batch's."""
    ordered = sorted(batch, key=lambda e: len(e[0]))
    passes: list[list] = [[]]
    for example in ordered:
        if passes[-1] and padded_width(passes[-1] + [example]) * (len(passes[-1]) + 1) > max_tokens:
            passes.append([])
        passes[-1].append(example)
    return passes


def padding_id(tokenizer) -> int:
    """The id batches are padded with: the pad token, else the eos (SmolLM2's pad is its eos; labels never come
    from it, and the attention mask hides it)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    width = padded_width(batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# -- metrics ---------------------------------------------------------------------------------------

def _causal_lm(model):
    """The underlying causal LM (a peft wrapper injects its adapters into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def autocast(model):
    """bf16 autocast when the model's frozen weights are bf16 (fp32 LoRA weights then compute in bf16 too)."""
    dtype = _causal_lm(model).dtype
    return torch.autocast(_causal_lm(model).device.type, dtype=dtype, enabled=dtype == torch.bfloat16)


def labelled_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 logits at the labelled positions only (the 49k-token output layer runs on those alone), the tokens
    they should predict, and the mask of those positions (batch x width - 1)."""
    lm = _causal_lm(model)
    with autocast(model):
        hidden = lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[:, :-1]
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE
        logits = lm.get_output_embeddings()(hidden[mask]).float()
    cap = getattr(lm.config.get_text_config(), "final_logit_softcapping", None)  # Gemma 2's, as its forward applies it
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, targets[mask], mask


def loss_and_accuracy(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float, int]:
    """Mean token loss over labelled tokens, token accuracy, and how many tokens were labelled.

    Only labelled positions go through the output layer (49k-token vocabulary): the assistant's tokens are
    a fraction of each example, so this saves most of the logits' compute and memory. The loss is fp32.
    """
    logits, wanted, mask = labelled_logits(model, batch)
    count = int(mask.sum())
    loss = F.cross_entropy(logits, wanted, reduction="sum") / max(count, 1)
    accuracy = float((logits.argmax(-1) == wanted).sum()) / max(count, 1)
    return loss, accuracy, count


@torch.no_grad()
def evaluate(model, examples: list, batch_size: int, pad_id: int, device: str) -> tuple[float, float]:
    """Token-weighted loss and accuracy over ``examples``."""
    model.eval()
    loss_sum = correct = tokens = 0.0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], pad_id, device)
        loss, accuracy, count = loss_and_accuracy(model, batch)
        loss_sum += float(loss) * count
        correct += accuracy * count
        tokens += count
    model.train()
    return loss_sum / max(tokens, 1), correct / max(tokens, 1)


def accumulate_gradients(model, batch: list[tuple[list[int], list[int]]], pad_id: int, device: str,
                         max_tokens: int = MAX_TOKENS_PER_PASS) -> tuple[torch.Tensor, float]:
    """Backward through ``batch`` in passes of at most ``max_tokens`` padded tokens; the gradients are those of the
    batch's mean token loss. Returns that loss (detached) and the token accuracy."""
    labelled = sum(sum(1 for t in labels[1:] if t != IGNORE) for _, labels in batch)
    total = torch.zeros((), device=device)
    correct = 0.0
    for part in micro_batches(batch, max_tokens):
        loss, accuracy, count = loss_and_accuracy(model, collate(part, pad_id, device))
        (loss * (count / max(labelled, 1))).backward()
        total += loss.detach() * count
        correct += accuracy * count
    return total / max(labelled, 1), correct / max(labelled, 1)


def completion_logprobs(model, sequences: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """Summed log-probabilities of each ``(prompt, completion)``'s completion tokens, in one padded forward pass
    (right padding; only completion positions go through the output layer)."""
    device = str(next(model.parameters()).device)
    batch = collate([(prompt + completion, [IGNORE] * len(prompt) + completion) for prompt, completion in sequences], pad_id, device)
    logits, wanted, mask = labelled_logits(model, batch)
    token_logprobs = torch.log_softmax(logits, -1).gather(-1, wanted[:, None]).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(len(sequences), device=device).index_add(0, rows, token_logprobs)


def pair_logprobs(model, pairs: list[dict[str, Any]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's preferred and other output's log-probabilities (both in one forward pass)."""
    both = completion_logprobs(model, [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs], pad_id)
    return both[: len(pairs)], both[len(pairs):]


@torch.no_grad()
def reference_logprobs(model, pairs: list[dict[str, Any]], pad_id: int) -> list[tuple[float, float]]:
    """The log-probabilities of each pair's preferred and other output under ``model`` as it is now (DPO's
    reference, taken before the first step: the model the job starts from)."""
    was_training = model.training
    model.eval()
    try:
        chosen, rejected = pair_logprobs(model, pairs, pad_id)
    finally:
        model.train(was_training)
    return list(zip(chosen.tolist(), rejected.tolist()))


def dpo_loss(policy, pairs: list[dict[str, Any]], beta: float, pad_id: int) -> tuple[torch.Tensor, float]:
    """DPO (Rafailov et al., 2023) over a batch of pairs: the mean loss and the share of pairs whose margin is
    positive. Each pair carries its reference log-probabilities (``ref_chosen``, ``ref_rejected``: those of the
    starting model, :func:`reference_logprobs`); before the first step the policy is the reference, so the loss is
    log 2."""
    chosen, rejected = pair_logprobs(policy, pairs, pad_id)
    reference = torch.tensor([[p["ref_chosen"], p["ref_rejected"]] for p in pairs], device=chosen.device)
    margin = beta * ((chosen - reference[:, 0]) - (rejected - reference[:, 1]))
    return -F.logsigmoid(margin).mean(), float((margin > 0).float().mean())


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of example indices: shuffled with ``seed``, sorted by length within runs of MEGABATCH batches so
    that a batch pads little, then the batches themselves shuffled (so lengths do not trend through an epoch)."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    run = batch_size * MEGABATCH
    batches = []
    for first in range(0, len(order), run):
        group = sorted(order[first : first + run], key=lambda i: lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


# -- the loop --------------------------------------------------------------------------------------

def prepare_model(base_model, settings: TrainSettings, resume_from: Path | None = None):
    """Wrap a base model of its own for training with a LoRA adapter, optionally from a checkpoint (the server
    instead adds the adapter to its shared base model: ``helpers.server.shared``)."""
    from peft import PeftModel, get_peft_model

    from helpers.server.localmodels import LOADING

    with LOADING:
        torch.manual_seed(settings.seed)  # the adapter's initial weights follow the job's seed, so a job is reproducible
        if resume_from is not None:
            model = PeftModel.from_pretrained(base_model, resume_from, is_trainable=True)
        else:
            model = get_peft_model(base_model, settings.lora_config(base_model))
    keep_input_dtype(model)
    return model


def keep_input_dtype(model) -> None:
    """Let bf16 activations reach the LoRA layers as they are (autocast chooses the dtype of their matmuls);
    peft would otherwise cast them to the adapter's fp32 and back, which costs more than the matmuls."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


@contextlib.contextmanager
def neftune(model, alpha: float):
    """NEFTune: in training passes (training mode, gradients on), add uniform noise in [-b, b] to the input
    embeddings, b = alpha / sqrt(sequence length x width). Answers and evaluations (no gradients; an inference
    engine sharing the base model answers between steps) see none. A regulariser against memorising the
    training phrasings: measured in ``benchmarks/RESULTS.md``."""
    embeddings = _causal_lm(model).get_input_embeddings()

    def add_noise(module, inputs, output):
        if not (module.training and torch.is_grad_enabled()):
            return output
        bound = alpha / math.sqrt(output.size(1) * output.size(2))
        return output + torch.empty_like(output).uniform_(-bound, bound)

    handle = embeddings.register_forward_hook(add_noise)
    try:
        yield
    finally:
        handle.remove()


def optimizer_and_schedule(model, settings: TrainSettings, total_steps: int, offset: int) -> tuple[list, Any, Any]:
    """The trainable parameters, AdamW over them (LoRA's B at ``lora_b_lr_ratio`` times the rate), and the learning-rate
    schedule: linear warm-up over the first 5% of the steps, then linear decay to 0; ``offset``: the steps already
    taken (a resumed job's schedule continues where it was)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if "lora_B" not in n], "lr": settings.learning_rate},
              {"params": [p for n, p in named if "lora_B" in n], "lr": settings.learning_rate * settings.lora_b_lr_ratio}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0, fused=True)
    warmup = max(1, total_steps // 20)

    def schedule(step: int) -> float:
        step += offset
        return min(1.0, (step + 1) / warmup) * max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return [p for _, p in named], optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train(model, tokenizer, train_examples: list, valid_examples: list, settings: TrainSettings, *,
          on_step: Callable[[StepMetrics], None], on_epoch_end: Callable[[int, int, StepMetrics], None],
          should_stop: Callable[[], bool], start_epoch: int = 0,
          hold: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext) -> StepMetrics:
    """Run the epochs from ``start_epoch``; ``train_examples`` are encoded by the settings' method, whose step each
    batch takes (``helpers.server.methods``).

    ``hold()`` is entered around every step, evaluation and ``on_epoch_end``: a model shared with an inference
    engine is used by one thread at a time, and the engine gets its turns between steps."""
    from helpers.server.methods import METHODS

    method = METHODS[settings.method]
    device = str(next(model.parameters()).device)
    pad_id = padding_id(tokenizer)
    torch.manual_seed(settings.seed)
    steps_per_epoch = math.ceil(len(train_examples) / settings.batch_size)
    total_steps = steps_per_epoch * settings.n_epochs
    with hold():  # which parameters train is the model's state while the adapter is active
        trainable, optimizer, scheduler = optimizer_and_schedule(model, settings, total_steps, start_epoch * steps_per_epoch)
    lengths = [method.length(e) for e in train_examples]
    step = start_epoch * steps_per_epoch
    metrics = StepMetrics(step, total_steps, float("nan"), float("nan"))
    noisy = method.neftune and settings.neftune_alpha > 0
    validating = bool(valid_examples) and method.validation_loss
    with neftune(model, settings.neftune_alpha) if noisy else contextlib.nullcontext():
        for epoch in range(start_epoch, settings.n_epochs):
            for indices in length_grouped_batches(lengths, settings.batch_size, settings.seed * 1000 + epoch):
                if should_stop():
                    raise Cancelled()
                chunk = [train_examples[i] for i in indices]
                with hold():
                    model.train()
                    optimizer.zero_grad(set_to_none=True)
                    stepped = method.step(model, chunk, settings, pad_id, device)
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    scheduler.step()
                step += 1
                metrics = StepMetrics(step, total_steps, float(stepped.loss), stepped.accuracy, **stepped.reported)
                if validating and (step % settings.eval_every == 0 or step == total_steps):
                    sample = random.Random(step).sample(valid_examples, min(len(valid_examples), settings.batch_size))
                    with hold():
                        metrics.valid_loss, metrics.valid_mean_token_accuracy = evaluate(model, sample, settings.batch_size, pad_id, device)
                if validating and step % steps_per_epoch == 0:  # as OpenAI: the whole file at each epoch's end
                    with hold():
                        metrics.full_valid_loss, metrics.full_valid_mean_token_accuracy = evaluate(model, valid_examples, settings.batch_size, pad_id, device)
                if valid_examples:
                    with hold():
                        metrics = dataclasses.replace(metrics, **method.evaluate(model, valid_examples, settings, step, pad_id))
                on_step(metrics)
            with hold():
                on_epoch_end(epoch + 1, step, metrics)
    return metrics
