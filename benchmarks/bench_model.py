"""Model benchmarks: the local server against bare transformers + peft, measured in the same run.

    make bench                                  # data, training and inference benchmarks
    python benchmarks/bench_model.py train      # our job vs a bare loop (ratio target <= 1.10), tokens/s, MFU
    python benchmarks/bench_model.py inference  # batched vs one at a time (>= 3x), HTTP vs in-process (<= 1.10)

Training: the course train set (333 examples), one epoch, batch 7 (what "auto" picks for it), LoRA r16 on all
projections, AdamW at 1e-3 with warm-up and linear decay, gradient clipping 1.0, seed 0. ``ours`` is a real
job through the HTTP API with the official client, timed from ``jobs.create`` to ``succeeded`` (so it
includes validating the file, loading the model, checkpoints and the results file); ``bare`` is the usual
transformers + peft loop written out in this file, timed from loading the model to saving the adapter, with
the same tokenizer, the same labels (assistant reply and its ``<|im_end|>``) and the same batches.

Model FLOPs utilisation (MFU): achieved model FLOPs per second over the CPU's fp32 matmul throughput, both
measured here (a 2048 x 2048 fp32 ``torch.mm``, all threads). Model FLOPs of LoRA training are counted as
4 x (non-embedding parameters) per token (forward 2N, backward through the frozen weights 2N; the adapters'
weight gradients are negligible), tokens being the real (unpadded) tokens of the batches.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
TRAIN = ROOT / "data" / "billing" / "train.jsonl"
TEST = ROOT / "data" / "billing" / "test.jsonl"
MODEL = "gpt-4.1-mini"  # served locally by SmolLM2-135M-Instruct
EPOCHS, BATCH, SEED, LR = 1, 7, 0, 1e-3
N_PROMPTS, MAX_TOKENS, CONCURRENCY = 32, 32, 16


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def start_server(data_dir: Path):
    """Our server in its own process on a free loopback port; returns (server, client)."""
    import socket

    from openai import OpenAI

    from helpers.backend import local_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = local_server(port=port, data_dir=data_dir)
    return server, OpenAI(base_url=server.api_url, api_key="bench", max_retries=0, timeout=600)


def stop_server(server) -> None:
    try:
        os.kill(httpx.get(f"{server.url}/health", timeout=5).json()["pid"], signal.SIGTERM)
    except (httpx.HTTPError, OSError):
        pass


def matmul_gflops(size: int = 2048, seconds: float = 3.0) -> float:
    """The CPU's fp32 matmul throughput (GFLOP/s), all threads."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


# -- training ----------------------------------------------------------------------------------------

def bare_loop(rows: list[dict]) -> dict:
    """The usual transformers + peft fine-tuning loop, same settings as the server's job."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.server.localmodels import base_models, resolve_base, weights_dir

    started = time.perf_counter()
    folder = weights_dir(resolve_base(MODEL) or next(iter(base_models().values())))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    examples = []
    for row in rows:  # labels: the assistant reply and its <|im_end|>; everything before it is -100
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        full = full[: full.rindex("<|im_end|>") + len("<|im_end|>")]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        examples.append((ids, [-100] * n_prompt + ids[n_prompt:]))
    torch.manual_seed(SEED)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    total = math.ceil(len(examples) / BATCH) * EPOCHS
    warmup = max(1, total // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (total - s) / max(1, total - warmup)))
    model.train()
    tokens = 0
    train_started = time.perf_counter()
    for epoch in range(EPOCHS):
        order = list(range(len(examples)))
        random.Random(SEED * 1000 + epoch).shuffle(order)
        for first in range(0, len(order), BATCH):
            chunk = [examples[i] for i in order[first : first + BATCH]]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.eos_token_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (ids, lab) in enumerate(chunk):
                input_ids[r, : len(ids)], labels[r, : len(lab)], mask[r, : len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
            tokens += int(mask.sum())
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
    train_s = time.perf_counter() - train_started
    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(out)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lora_" not in n)
    return {"seconds": time.perf_counter() - started, "train_seconds": train_s, "tokens": tokens, "steps": total,
            "final_loss": float(loss), "non_embedding_params": non_embedding}


def ours(rows: list[dict], work: Path) -> dict:
    from helpers.server.jobs import TERMINAL

    server, client = start_server(work / "server")
    try:
        path = work / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        file = client.files.create(file=path.open("rb"), purpose="fine-tune")
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)  # warm: weights cached
        started = time.perf_counter()
        job = client.fine_tuning.jobs.create(training_file=file.id, model=MODEL, seed=SEED,
                                             hyperparameters={"n_epochs": EPOCHS, "batch_size": BATCH, "learning_rate_multiplier": 1.0})
        while job.status not in TERMINAL:
            time.sleep(0.25)
            job = client.fine_tuning.jobs.retrieve(job.id)
        seconds = time.perf_counter() - started
        if job.status != "succeeded":
            raise SystemExit(f"the benchmark job {job.status}: {job.error}")
        steps = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
        first_step = min(e.created_at for e in steps)
        return {"seconds": seconds, "steps": len(steps), "final_loss": max(steps, key=lambda e: e.data["step"]).data["train_loss"],
                "first_step_at": first_step}
    finally:
        stop_server(server)


def bench_train() -> dict:
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines() if line.strip()]
    peak = matmul_gflops()
    with tempfile.TemporaryDirectory() as work:
        print(f"training: {len(rows)} examples x {EPOCHS} epoch(s), batch {BATCH}; our server's job ...", flush=True)
        mine = ours(rows, Path(work))
        print(f"  ours: {mine['seconds']:.1f} s; bare transformers + peft loop ...", flush=True)
        bare = bare_loop(rows)
    flops = 4 * bare["non_embedding_params"] * bare["tokens"]
    result = {
        "machine": machine(), "examples": len(rows), "epochs": EPOCHS, "batch_size": BATCH, "tokens": bare["tokens"],
        "matmul_gflops": peak, "ours_s": mine["seconds"], "bare_s": bare["seconds"], "bare_train_s": bare["train_seconds"],
        "ratio": mine["seconds"] / bare["seconds"],
        "ours_tokens_per_s": bare["tokens"] / mine["seconds"], "bare_tokens_per_s": bare["tokens"] / bare["seconds"],
        "ours_mfu": flops / mine["seconds"] / (peak * 1e9), "bare_mfu": flops / bare["seconds"] / (peak * 1e9),
        "bare_train_only_mfu": flops / bare["train_seconds"] / (peak * 1e9),
        "final_loss": {"ours": mine["final_loss"], "bare": bare["final_loss"]},
    }
    print(f"""
training ({result['machine']})
  ours (HTTP job, create -> succeeded)   {mine['seconds']:7.1f} s  {result['ours_tokens_per_s']:6.0f} tokens/s  MFU {result['ours_mfu']:.1%}
  bare transformers + peft (load->save)  {bare['seconds']:7.1f} s  {result['bare_tokens_per_s']:6.0f} tokens/s  MFU {result['bare_mfu']:.1%}
  ratio ours / bare                      {result['ratio']:7.2f}   (target <= 1.10)
  CPU fp32 matmul throughput             {peak:7.1f} GFLOP/s; {bare['tokens']:,} tokens, final loss ours {mine['final_loss']:.3f} / bare {bare['final_loss']:.3f}""")
    return result


# -- inference ---------------------------------------------------------------------------------------

def test_prompts() -> list[list[dict]]:
    rows = [json.loads(line) for line in TEST.read_text().splitlines() if line.strip()][:N_PROMPTS]
    return [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]


def in_process(prompts: list[list[dict]]) -> dict:
    """transformers' generate, one prompt at a time, greedy, in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.server.localmodels import resolve_base, weights_dir

    folder = weights_dir(resolve_base(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    kwargs = {"max_new_tokens": MAX_TOKENS, "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
              "pad_token_id": tokenizer.eos_token_id}
    with torch.no_grad():
        warm = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        model.generate(**warm, **kwargs)
        tokens, started = 0, time.perf_counter()
        for messages in prompts:
            encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            output = model.generate(**encoded, **kwargs)
            new = output[0, encoded["input_ids"].shape[1]:].tolist()
            tokens += new.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in new else len(new)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def over_http(client, prompts: list[list[dict]], concurrency: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(messages):
        started = time.perf_counter()
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
        with lock:
            latencies.append(time.perf_counter() - started)
        return reply.usage.completion_tokens

    started = time.perf_counter()
    if concurrency == 1:
        tokens = sum(one(m) for m in prompts)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(one, prompts))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "p50_s": statistics.median(latencies), "p95_s": statistics.quantiles(latencies, n=20)[-1]}


def bench_inference() -> dict:
    prompts = test_prompts()
    with tempfile.TemporaryDirectory() as work:
        server, client = start_server(Path(work) / "server")
        try:
            client.chat.completions.create(model=MODEL, messages=prompts[0], max_tokens=4)  # load the model once
            print(f"inference: {len(prompts)} held-out test requests, greedy, max_tokens {MAX_TOKENS} ...", flush=True)
            sequential = over_http(client, prompts, 1)
            batched = over_http(client, prompts, CONCURRENCY)
        finally:
            stop_server(server)
    local = in_process(prompts)
    result = {"machine": machine(), "prompts": len(prompts), "max_tokens": MAX_TOKENS, "concurrency": CONCURRENCY,
              "http_sequential": sequential, "http_batched": batched, "in_process": local,
              "batched_speedup": batched["tokens_per_s"] / sequential["tokens_per_s"],
              "http_over_in_process": local["tokens_per_s"] / sequential["tokens_per_s"]}
    print(f"""
inference ({result['machine']})
  HTTP, one request at a time            {sequential['tokens_per_s']:6.1f} tokens/s  p50 {sequential['p50_s']:.2f} s  p95 {sequential['p95_s']:.2f} s
  HTTP, {CONCURRENCY} concurrent (batched)         {batched['tokens_per_s']:6.1f} tokens/s  p50 {batched['p50_s']:.2f} s  p95 {batched['p95_s']:.2f} s
  in-process generate, one at a time     {local['tokens_per_s']:6.1f} tokens/s
  batched / one at a time                {result['batched_speedup']:6.2f}x  (target >= 3)
  HTTP time / in-process time            {result['http_over_in_process']:6.2f}   (target <= 1.10)""")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["train", "inference", "all"], nargs="?", default="all")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    results = {}
    if args.which in ("train", "all"):
        results["train"] = bench_train()
    if args.which in ("inference", "all"):
        results["inference"] = bench_inference()
    (OUT / f"bench_model_{args.which}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
