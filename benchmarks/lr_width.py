"""The LoRA learning rate against the model's width, behind the "auto" learning rate's 1/width scaling
(``helpers.server.hyperparameters.auto_lr_multiplier``).

    .venv/bin/python benchmarks/lr_width.py

Tiny random-weight Llama-3-style models (2 layers, hidden 128 and 256; ``tests/families.py``) train on 48 course
examples (no system message) for 6 epochs with the server's own training code, at learning-rate multipliers from 0.5
to 16 (the rate is 2e-3 times it); each prints its loss and token accuracy on those examples. SmolLM2-135M (width 576)
was swept on the course task in ``benchmarks/sweep.py`` (best: 4e-3). About a minute on 2 cores.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import families
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from helpers.server import training
    from helpers.server.chat_template import ChatTemplate

    family = families.FAMILIES["llama3"]
    tokenizer = families.family_tokenizer(family)
    chat = ChatTemplate.of(tokenizer, {tokenizer.convert_tokens_to_ids(family.end_of_turn)})
    rows = [json.loads(line) for line in (ROOT / "data/billing/train.jsonl").read_text(encoding="utf-8").splitlines()[:48]]
    examples = [chat.encode_chat([m for m in r["messages"] if m["role"] != "system"]) for r in rows]
    for hidden in (128, 256):
        for multiplier in (0.5, 1, 2, 4, 8, 16):
            config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              head_dim=hidden // 4, tie_word_embeddings=True, initializer_range=0.3)
            torch.manual_seed(0)
            settings = training.TrainSettings(n_epochs=6, batch_size=4, learning_rate_multiplier=multiplier, seed=7)
            model = training.prepare_model(AutoModelForCausalLM.from_config(config), settings)
            training.train(model, tokenizer, examples, [], settings, on_step=lambda m: None, on_epoch_end=lambda *a: None,
                           should_stop=lambda: False)
            loss, accuracy = training.evaluate(model, examples, 8, tokenizer.pad_token_id, "cpu")
            print(f"width {hidden}, rate {multiplier * training.BASE_LEARNING_RATE:.0e} (x{multiplier}): loss {loss:.3f}, "
                  f"token accuracy {accuracy:.3f}", flush=True)


if __name__ == "__main__":
    main()
