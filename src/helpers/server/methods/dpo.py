"""Direct preference optimisation (``method.type = "dpo"``; Rafailov et al., 2023): preference pairs, each compared
with the model the job starts from (its reference log-probabilities, computed once before the first step and kept
with the job)."""
from __future__ import annotations

from typing import Any

from helpers.server.methods.base import Method, Preparation, Stepped

REFERENCE_BATCH = 8  # pairs per forward pass when their reference log-probabilities are computed


class Dpo(Method):
    name = "dpo"
    examples = "preference"
    #: 1e-4 on SmolLM2-135M: 1e-3 turned an SFT model's answers into degenerate text (format 0.525 -> 0.000) where 1e-4
    #: took it to 1.000 (benchmarks/RESULTS.md, "DPO after SFT")
    auto_lr_multiplier = 0.05
    own_hyperparameters = {"beta": 0.1}
    validation_loss = False  # a validation file of pairs is checked, not scored

    def encode(self, chat, row: dict[str, Any]) -> dict[str, list[int]]:
        return chat.encode_preference(row)

    def encode_file(self, chat, rows: list[dict[str, Any]], max_len: int) -> tuple[list, int]:
        return [self.encode(chat, row) for row in rows], 0  # every pair is kept (the window is the chat examples' limit)

    def length(self, example: dict[str, list[int]]) -> int:
        return len(example["prompt"]) + max(len(example["chosen"]), len(example["rejected"]))

    def prepare(self, preparation: Preparation) -> None:
        """The reference: each pair's log-probabilities under the model the job starts from (the base, or the fine-tuned
        model it continues), computed with the adapter as it starts, and kept with the job so that a resumed job
        compares with the same reference."""
        from helpers.server import training

        pairs, shared, adapter = preparation.examples, preparation.shared, preparation.adapter
        reference = preparation.job.dpo_reference
        if reference is None or len(reference) != len(pairs):
            reference = []
            pad_id = training.padding_id(shared.tokenizer)
            for first in range(0, len(pairs), REFERENCE_BATCH):
                if preparation.cancelled():
                    raise training.Cancelled()
                with shared.training_turn(adapter):
                    reference += training.reference_logprobs(shared.peft, pairs[first : first + REFERENCE_BATCH], pad_id)
            preparation.keep(dpo_reference=reference)
            preparation.event(f"Reference log-probabilities computed for {len(pairs)} preference pairs (the starting model's).")
        for pair, (chosen, rejected) in zip(pairs, reference):
            pair["ref_chosen"], pair["ref_rejected"] = chosen, rejected

    def step(self, model, batch, settings, pad_id: int, device: str):
        from helpers.server.training import dpo_loss

        loss, accuracy = dpo_loss(model, batch, settings.beta, pad_id)
        loss.backward()
        return Stepped(loss.detach(), accuracy)
