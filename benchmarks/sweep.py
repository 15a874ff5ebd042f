"""The sweep behind the local stand-in's "auto" hyperparameters: train in-process, score on held-out requests.

    python benchmarks/sweep.py "epochs=3 batch=4 lr=2 targets=all rag=0.5" "epochs=5 targets=mlp" ...

Each quoted run is a set of key=value settings (defaults below); it trains SmolLM2-135M-Instruct on the course
train set with the server's own training code (``helpers.server.training``), then scores greedy answers on
the 111 held-out requests of ``test.jsonl`` and on ``test_new_codes.jsonl`` (codes training never saw), each
without and with 5 retrieved codes (the test with them is how 05's teacher answers). One JSON line per run is
appended to ``benchmarks/out/sweep.jsonl``.

Keys: ``epochs``, ``batch``, ``lr`` (the learning rate in units of 1e-3: ``lr=4`` trains at 4e-3),
``targets`` (``all`` projections, ``mlp``, ``attn``), ``r``, ``alpha``, ``rag`` (share of training examples that
carry retrieved codes), ``k`` (codes retrieved for them), ``n`` (training examples, 0 = all 333), ``seed``, ``plus``
(LoRA+: the B matrices' learning rate over A's), ``neft`` (NEFTune alpha), ``layers`` (adapt only the top N layers),
``table`` (copies of the code table added as examples: each trained code's description -> its answer),
``copy`` (share of the examples with retrieved codes whose answer is renumbered, ``helpers.course.retrieval.renumber``: the
right candidate and the answer become one of the code's phrasings with a number no CPT code uses; it can only be copied).
The answers are the course's (``Description - CPT Code: NNNNN``); the rows of RESULTS.md with the number first
(``CPT Code: NNNNN - Description``) were run on the data of that time (the ``order`` key of commit 251922e).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
BILLING = ROOT / "data" / "billing"
OUT = Path(__file__).resolve().parent / "out"
TARGETS = {"all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
           "mlp": ("gate_proj", "up_proj", "down_proj"), "attn": ("q_proj", "k_proj", "v_proj", "o_proj")}
DEFAULTS = {"epochs": 3, "batch": 4, "lr": 2.0, "targets": "all", "r": 16, "alpha": 32, "rag": 0.5, "n": 0, "seed": 1, "plus": 1.0, "k": 5, "neft": 0.0, "layers": 0, "table": 0, "copy": 0.0}


def parse(text: str) -> dict:
    run = dict(DEFAULTS)
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"unknown key {key!r} in {text!r}; keys: {', '.join(DEFAULTS)}")
        run[key] = type(DEFAULTS[key])(value)
    return run


def answers(model, tokenizer, requests: list[list[dict]], batch: int = 16) -> list[str]:
    """Greedy answers, batched (left padding), as the server gives them."""
    import torch

    from helpers.pricing import catalogue
    from helpers.server import localmodels
    from helpers.server.training import autocast

    chat = localmodels.load_chat(catalogue.resolve_base("gpt-4.1-mini"))

    tokenizer.padding_side = "left"
    out = []
    model.eval()
    for first in range(0, len(requests), batch):
        prompts = [chat.render(m, add_generation_prompt=True) for m in requests[first : first + batch]]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad(), autocast(model):
            generated = model.generate(**encoded, max_new_tokens=32, do_sample=False, temperature=None, top_p=None,
                                       top_k=None, pad_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def score(model, tokenizer, rows: list[dict], rag: bool) -> dict:
    from helpers.course.billing import parse_answer
    from helpers.course.retrieval import with_retrieval

    requests = [r["messages"][:-1] for r in rows]
    if rag:
        requests = [with_retrieval(m) for m in requests]
    given = answers(model, tokenizer, requests)
    expected = [r["messages"][-1]["content"] for r in rows]
    codes = [(parse_answer(g) or (None,))[0] == parse_answer(e)[0] for g, e in zip(given, expected)]
    return {"answers": [[e, g] for e, g, ok in zip(expected, given, codes) if not ok][:12],
            "code_accuracy": sum(codes) / len(rows), "exact_match": sum(g.strip() == e for g, e in zip(given, expected)) / len(rows)}


def run_one(run: dict) -> dict:
    from bench_model import peak_rss_mb  # this folder's benchmark helpers

    from helpers.course import billing, retrieval
    from helpers.data import dataprep
    from helpers.pricing import catalogue
    from helpers.server import localmodels, training

    base = catalogue.resolve_base("gpt-4.1-mini")
    chat = localmodels.load_chat(base)
    tokenizer = chat.tokenizer
    with tempfile.TemporaryDirectory() as work:
        subset = dataprep.take(BILLING / "train.jsonl", run["n"], Path(work))
        path = Path(work) / "train_rag.jsonl"
        retrieval.augment_file(subset, path, run["rag"], run["k"], run["seed"], renumbered_share=run["copy"])
        rows = dataprep.read_jsonl(path)
    rows += [billing.chat_example(c.description, c.answer) for c in billing.load_codes() if c.in_training] * run["table"]
    examples = [chat.encode_chat(r["messages"]) for r in rows]
    settings = training.TrainSettings(n_epochs=run["epochs"], batch_size=run["batch"], learning_rate_multiplier=run["lr"] * 1e-3 / training.BASE_LEARNING_RATE,
                                      seed=run["seed"], lora_b_lr_ratio=run["plus"], neftune_alpha=run["neft"], lora_r=run["r"], lora_alpha=run["alpha"], lora_targets=TARGETS[run["targets"]], lora_top_layers=run["layers"])
    model = training.prepare_model(localmodels.load_model(base), settings)
    started = time.perf_counter()
    last = training.train(model, tokenizer, examples, [], settings, on_step=lambda m: None,
                          on_epoch_end=lambda *a: None, should_stop=lambda: False)
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids, _ in examples) * run["epochs"]
    peak_mb = int(peak_rss_mb(os.getpid()))
    result = {**run, "examples": len(examples), "train_s": round(seconds, 1), "peak_rss_mb": peak_mb, "tokens_per_s": round(tokens / seconds),
              "final_loss": round(last.train_loss, 4), "precision": str(localmodels.compute_dtype()).removeprefix("torch."),
              "test": score(model, tokenizer, dataprep.read_jsonl(BILLING / "test.jsonl"), rag=False),
              "test_rag": score(model, tokenizer, dataprep.read_jsonl(BILLING / "test.jsonl"), rag=True),  # 05's teacher
              "new_codes": score(model, tokenizer, dataprep.read_jsonl(BILLING / "test_new_codes.jsonl"), rag=False),
              "new_codes_rag": score(model, tokenizer, dataprep.read_jsonl(BILLING / "test_new_codes.jsonl"), rag=True)}
    return result


def main(argv: list[str]) -> int:
    runs = [parse(text) for text in (argv or [""])]
    OUT.mkdir(exist_ok=True)
    for run in runs:
        result = run_one(run)
        with (OUT / "sweep.jsonl").open("a") as out:
            out.write(json.dumps(result) + "\n")
        print(f"{' '.join(f'{k}={run[k]}' for k in DEFAULTS)}: {result['train_s']} s ({result['tokens_per_s']} tokens/s), "
              f"loss {result['final_loss']}, peak {result['peak_rss_mb']} MB; test code {result['test']['code_accuracy']:.3f} exact {result['test']['exact_match']:.3f}; "
              f"with retrieval {result['test_rag']['code_accuracy']:.3f}; new codes {result['new_codes']['code_accuracy']:.3f}, "
              f"with retrieval {result['new_codes_rag']['code_accuracy']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
