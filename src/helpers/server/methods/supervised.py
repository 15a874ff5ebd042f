"""Supervised fine-tuning (``method.type = "supervised"``): chat examples, the loss on the assistant's tokens only
(the labels come from the model's chat template: ``ChatTemplate.encode_chat``)."""
from __future__ import annotations

from typing import Any

from helpers.server import chat_template
from helpers.server.methods.base import Method, Stepped


class Supervised(Method):
    name = "supervised"
    examples = "chat"
    #: 4e-3 on SmolLM2-135M, the best of the sweep in benchmarks/RESULTS.md (8e-3 diverged)
    auto_lr_multiplier = 2.0
    neftune = True

    def encode(self, chat, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        return chat.encode_chat(row["messages"], chat_template.functions_of(row.get("tools") or row.get("functions")))

    def length(self, example: tuple[list[int], list[int]]) -> int:
        return len(example[0])

    def step(self, model, batch, settings, pad_id: int, device: str):
        from helpers.server.training import accumulate_gradients

        loss, accuracy = accumulate_gradients(model, batch, pad_id, device)
        return Stepped(loss.detach(), accuracy)
