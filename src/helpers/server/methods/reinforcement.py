"""Reinforcement fine-tuning (``method.type = "reinforcement"``) by group-relative policy optimisation (GRPO: Shao et
al., 2024, DeepSeekMath): for each prompt of a batch the model samples a group of answers with the training adapter on,
a grader scores each, and an answer's advantage is its reward minus its group's mean, over the group's spread. The
policy loss raises the log-probabilities of answers better than their group's and lowers the others' (per token, the
clipped ratio of GRPO, which is 1 in its single on-policy update), and a KL term (the k3 estimator, per token) holds
the policy near the model the job starts from: the base (the adapter off), or the fine-tuned model it continues (that
model's adapter, frozen beside the one that trains). A group whose answers all score the same teaches nothing: its
advantages are 0.

The examples are prompts: a conversation that ends with the user's turn, and the row's other fields, which the
grader's templates read as ``item``."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helpers.server.methods.base import JobFailure, Method, Preparation, Stepped

if TYPE_CHECKING:
    import torch

    from helpers.server.graders import Grader

#: answers sampled per prompt at ``compute_multiplier`` 1 ("auto"); the multiplier scales it (at least 2: one answer
#: has no group to be compared with)
GROUP = 4
#: the longest answer sampled, in tokens (a course answer is about 15; the notebooks ask for 32)
MAX_ANSWER_TOKENS = 32
#: sampling temperature: answers must differ for a group to teach anything, and stay answers (at 1.0 SmolLM2-135M's
#: answers to the course's requests were mostly word salad)
TEMPERATURE = 0.7
#: the KL term's weight (GRPO's beta: 0.04 in DeepSeekMath)
KL_WEIGHT = 0.04
#: GRPO's clip range on the probability ratio (inactive in one on-policy update, kept so that the loss is GRPO's)
CLIP = 0.2


@dataclass
class Grading:
    """What a reinforcement job's steps need beside the model: its grader (the job's, checked once as the job starts),
    where python graders run, the tokens that end the model's turn, how answers become text, and the compute multiplier."""

    grader: Grader
    sandbox: Any  # helpers.server.graders.Sandbox
    stop_ids: list[int]
    decode: Callable[[list[int]], str]
    compute_multiplier: float = 1.0
    eval_interval: int = 1
    eval_samples: int = 1
    #: the model the KL term compares with, active inside it: the starting fine-tuned model's frozen adapter (set by
    #: ``prepare``); None: the base, with the adapter off
    reference: Callable[[], AbstractContextManager] | None = None
    #: a conversation as the model's prompt tokens (its chat template), for a grader model's messages
    prompt_ids: Callable[[list[dict[str, Any]]], list[int]] | None = None
    #: who answers a model grader (``score_model``, ``label_model``): set by ``prepare`` when the grader has one
    judge: Callable[[Any], str] | None = None
    #: tells the job's events (set by ``prepare``): why the grader failed on answers, so a user sees more than a count
    tell: Callable[[str], None] | None = None


def group_size(compute_multiplier: float) -> int:
    """Answers sampled per prompt for a ``compute_multiplier``."""
    return max(2, round(GROUP * compute_multiplier))


@dataclass
class Rewards:
    """What one step's sampling and grading saw: the mean reward, the answers' mean length in tokens, how many
    answers the grader failed on (scored 0), and the mean per-token KL to the model with the adapter off."""

    reward_mean: float
    answer_tokens_mean: float
    grader_failures: int
    kl: float

    def as_metrics(self) -> dict[str, float]:
        return {"train_reward_mean": self.reward_mean, "train_answer_tokens_mean": self.answer_tokens_mean,
                "train_grader_failures": self.grader_failures, "train_kl": self.kl}


def advantages(rewards: list[float], group: int) -> list[float]:
    """Each answer's reward minus its group's mean, over the group's standard deviation (0 where all score alike)."""
    import statistics

    out = []
    for first in range(0, len(rewards), group):
        scores = rewards[first : first + group]
        mean, spread = statistics.fmean(scores), statistics.pstdev(scores)
        out += [(s - mean) / spread if spread > 1e-6 else 0.0 for s in scores]
    return out


class Reinforcement(Method):
    name = "reinforcement"
    examples = "prompt"
    #: 5e-4 on SmolLM2-135M. Measured on 16 course prompts with a grader of the form ("CPT Code" in the answer), steps of
    #: 4 prompts x 4 answers: the mean reward went 0.31 -> 0.81 in 8 steps; at 2e-3 it reached 1.0 in 3 steps with a KL
    #: of 0.5 to the base and answers that no longer stopped (the reward did not ask them to)
    auto_lr_multiplier = 0.25
    own_hyperparameters = {"compute_multiplier": 1.0, "eval_interval": 1, "eval_samples": 1}
    fixed_hyperparameters = {"reasoning_effort": ("default", "the local models answer without a separate reasoning phase")}
    graded = True
    validation_loss = False  # a validation file of prompts is graded, not scored by a loss

    def encode(self, chat, row: dict[str, Any]) -> dict[str, Any]:
        from helpers.server import chat_template

        functions = chat_template.functions_of(row.get("tools") or row.get("functions"))
        return {"prompt": chat.prompt_ids(row["messages"], functions), "item": {k: v for k, v in row.items() if k != "messages"}}

    def job_settings(self, job, chat, sandbox) -> dict[str, Any]:
        from helpers.server import graders

        tokenizer = chat.tokenizer
        hyper = job.method_hyperparameters  # numbers once the files are validated
        return {"grading": Grading(graders.check(job.grader), sandbox, sorted(chat.stop_ids),
                                   lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip(),
                                   float(hyper["compute_multiplier"]), int(hyper["eval_interval"]), int(hyper["eval_samples"]),
                                   prompt_ids=lambda messages: chat.prompt_ids(messages, None))}

    def length(self, example: dict[str, Any]) -> int:
        return len(example["prompt"]) + MAX_ANSWER_TOKENS

    def prepare(self, preparation: Preparation) -> None:
        """A grader that asks a model gets that model, answering on this job's copy of the base between its steps' own
        sampling. A job that continues a fine-tuned model keeps that model's adapter, frozen, beside the one that
        trains: the KL term holds the policy near it (near the base instead, it would pull the model back to what it
        was before its first fine-tuning: a KL of about 2 per token from 03's model, measured)."""
        if preparation.settings is None:
            return
        preparation.settings.grading.tell = preparation.event
        self._prepare_judge(preparation, preparation.settings.grading)
        if preparation.start_weights is None:
            return
        from helpers.server.shared import ADAPTER_CONFIG

        job = preparation.job
        if not (preparation.start_weights / ADAPTER_CONFIG).exists():
            raise JobFailure("model_not_available", "model", f"The model {job.start_from} this job started from was deleted: "
                             "a reinforcement job compares its answers with that model's, so it cannot go on without it.")
        shared, adapter = preparation.shared, preparation.adapter
        with shared.hold():
            shared.add_reference_adapter(adapter, preparation.start_weights)
        preparation.settings.grading.reference = lambda: shared.reference_turn(adapter)
        preparation.event(f"The KL term compares with {job.start_from}, the model this job starts from.")

    def _prepare_judge(self, preparation: Preparation, grading: Grading) -> None:
        from helpers.server import graders
        from helpers.server.shared import ADAPTER_CONFIG
        from helpers.server.training import padding_id

        asked = graders.models_asked(grading.grader)
        if not asked or preparation.model_weights is None:
            return
        weights = {name: preparation.model_weights(name) for name in asked}
        shared, adapter, pad_id = preparation.shared, preparation.adapter, padding_id(preparation.shared.tokenizer)

        def judge(ask: graders.JudgeAsk) -> str:
            folder = weights.get(ask.model)
            if folder is not None and not (folder / ADAPTER_CONFIG).exists():
                raise graders.JudgeUnavailable(f"the grader's model {ask.model} was deleted while the job trained")
            prompt = grading.prompt_ids(ask.messages) if grading.prompt_ids else []
            if len(prompt) + ask.max_tokens > shared.base.context_length:
                raise graders.JudgeUnavailable(f"the grader's messages are {len(prompt):,} tokens, more than {ask.model} "
                                               f"reads ({shared.base.context_length:,} with its answer)")
            with shared.judge_turn(adapter, folder) as model:
                answer = sample(model, [prompt], 1, grading.stop_ids, pad_id, temperature=ask.temperature,
                                top_p=ask.top_p, max_tokens=ask.max_tokens)[0]
            return grading.decode(answer.text_ids)

        grading.judge = judge
        preparation.event(f"The grader asks {', '.join(sorted(asked))}, which answers on this job's copy of the base.")

    def evaluate(self, model, examples: list, settings, step: int, pad_id: int) -> dict[str, Any]:
        """Every ``eval_interval`` steps: ``eval_samples`` answers to each validation prompt, sampled and graded as in
        training (no update), their mean reward."""
        grading: Grading = settings.grading
        if not examples or step % grading.eval_interval:
            return {}
        rewards = self._grade(model, examples, grading, grading.eval_samples, pad_id)[1]
        return {"valid_reward_mean": sum(rewards) / len(rewards)}

    def _grade(self, model, batch: list, grading: Grading, group: int, pad_id: int) -> tuple[list[Answer], list[float], int]:
        """``group`` answers to each prompt of ``batch``, their rewards, and how many the grader failed on (scored 0)."""
        from helpers.server import graders

        answers = sample(model, [example["prompt"] for example in batch], group, grading.stop_ids, pad_id)
        outcomes = [graders.grade(grading.grader, grading.decode(answer.text_ids), batch[i // group]["item"], grading.sandbox,
                                  judge=grading.judge) for i, answer in enumerate(answers)]
        failed = [outcome for outcome in outcomes if outcome.failed]
        if failed and grading.tell is not None:
            grading.tell(f"The grader failed on {len(failed)} of {len(outcomes)} answers, each scored 0; the first: "
                         f"{(failed[0].detail or ', '.join(failed[0].flags)).rstrip('.')}.")
        return answers, [outcome.score for outcome in outcomes], len(failed)

    def step(self, model, batch, settings, pad_id: int, device: str) -> Stepped:
        grading: Grading = settings.grading
        group = group_size(grading.compute_multiplier)
        answers, rewards, failures = self._grade(model, batch, grading, group, pad_id)
        loss, kl = policy_loss(model, [(batch[i // group]["prompt"], a.ids) for i, a in enumerate(answers)],
                               advantages(rewards, group), pad_id, grading.reference)
        loss.backward()
        report = Rewards(sum(rewards) / len(rewards), sum(len(a.text_ids) for a in answers) / len(answers), failures, kl)
        return Stepped(loss.detach(), report.reward_mean, report.as_metrics())


@dataclass
class Answer:
    """A sampled answer: its tokens as learned (ending with the end-of-turn token when the model stopped) and as text."""

    ids: list[int]
    text_ids: list[int]


def sample(model, prompts: list[list[int]], group: int, stop_ids: list[int], pad_id: int, *, temperature: float = TEMPERATURE,
           top_p: float = 1.0, max_tokens: int = MAX_ANSWER_TOKENS) -> list[Answer]:
    """``group`` answers to each prompt, sampled in one batch (prompts left-padded), ``group`` consecutive per prompt
    (at temperature 0: the most likely answer)."""
    import torch

    from helpers.server.shared import INFERENCE_ATTENTION, set_attention
    from helpers.server.training import _causal_lm, autocast

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    was_training = model.training
    model.eval()
    had = set_attention(_causal_lm(model), INFERENCE_ATTENTION)  # SDPA generates faster; training attends eagerly
    try:
        with torch.no_grad(), autocast(model):
            how = (dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p) if temperature > 0
                   else dict(do_sample=False, temperature=None, top_k=None, top_p=None))
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **how, max_new_tokens=max_tokens,
                                 num_return_sequences=group, eos_token_id=list(stop_ids), pad_token_id=pad_id)
    finally:
        set_attention(_causal_lm(model), had)
        model.train(was_training)
    answers = []
    for row in out[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in stop_ids), None)
        answers.append(Answer(row[: end + 1], row[:end]) if end is not None else Answer(row, row))
    return answers


def token_logprobs(model, sequences: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probability of each answer token of each ``(prompt, answer)`` and the row each belongs to."""
    import torch

    from helpers.server.chat_template import IGNORE
    from helpers.server.training import collate, labelled_logits

    device = str(next(model.parameters()).device)
    batch = collate([(prompt + answer, [IGNORE] * len(prompt) + answer) for prompt, answer in sequences], pad_id, device)
    logits, wanted, mask = labelled_logits(model, batch)
    return torch.log_softmax(logits, -1).gather(-1, wanted[:, None]).squeeze(-1), mask.nonzero()[:, 0]


def policy_loss(model, sequences: list[tuple[list[int], list[int]]], advantage: list[float], pad_id: int,
                reference: Callable[[], AbstractContextManager] | None = None) -> tuple[torch.Tensor, float]:
    """GRPO's loss over the answers (each answer's tokens averaged, then the answers), and the mean per-token KL to the
    ``reference`` (the model with the adapter off when None)."""
    import torch

    kept = [(s, a) for s, a in zip(sequences, advantage) if s[1]]  # an empty answer has no token to learn from
    if not kept:
        zero = sum(p.sum() * 0 for p in model.parameters() if p.requires_grad)
        return zero, 0.0
    sequences, advantage = [s for s, _ in kept], [a for _, a in kept]
    policy, rows = token_logprobs(model, sequences, pad_id)
    with torch.no_grad(), (reference() if reference is not None else model.disable_adapter()):
        reference_logprobs, _ = token_logprobs(model, sequences, pad_id)
    weights = torch.tensor(advantage, device=policy.device)[rows]
    ratio = torch.exp(policy - policy.detach())
    surrogate = torch.minimum(ratio * weights, torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * weights)
    kl = torch.exp(reference_logprobs - policy) - (reference_logprobs - policy) - 1
    per_token = -surrogate + KL_WEIGHT * kl
    lengths = torch.zeros(len(sequences), device=policy.device).index_add(0, rows, torch.ones_like(policy))
    per_answer = torch.zeros(len(sequences), device=policy.device).index_add(0, rows, per_token) / lengths
    return per_answer.mean(), float(kl.detach().mean())
