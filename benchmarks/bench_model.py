"""Model benchmarks: the local server against bare training loops and in-process generation, measured in the same run.

    make bench                                  # data, training and inference benchmarks
    python benchmarks/bench_model.py train      # speed-up vs an fp32 loop (target >= 2.0), our job vs its own loop (<= 1.10), peak memory
    python benchmarks/bench_model.py inference  # batched vs one at a time (>= 3x), HTTP vs in-process (<= 1.10)
    python benchmarks/bench_model.py reports    # the server's resident memory after each notebook of `make reports`
    python benchmarks/bench_model.py llama      # llama.cpp's generation tokens/s against the server's, same model and prompts
    python benchmarks/bench_model.py serving    # many tuned models: 64 requests over 8 adapters, 16 in flight, in-process vs vLLM
    python benchmarks/bench_model.py agreement  # 03's model on the 111 held-out requests: vLLM's answers against the in-process engine's, fp32 and bf16

Training: the course train set as notebook 03 trains it at course size (all 333 examples, a quarter of them with five
retrieved codes in the prompt), one epoch, with the local stand-in's "auto" hyperparameters (batch size, learning
rate, LoRA rank/alpha/targets), seed 0. Three contenders train the same examples with the same hyperparameters:

* ``ours``: a real job through the HTTP API with the official client, timed from ``jobs.create`` to ``succeeded``
  (so it includes validating the file, checkpoints and the results file), on the server's shared bf16 base model;
* ``own loop``: the server's training code (``helpers.server.training.train``) called in-process, from loading
  the model to saving the adapter, with the same validation examples (the job reports a validation loss every
  ``eval_every`` steps and over the whole file at the end): what the job costs without the server around it;
* ``fp32 loop``: the usual transformers + peft loop written out in this file, fp32 weights, full logits, batches in
  random order, timed from loading the model to saving the adapter, with the job's validation work done the
  usual way (a validation batch every ``eval_every`` steps, the whole validation file at the end).

The speed-up is fp32 loop time / our job's time; both adapters are then scored on the validation set (loss),
which must agree within 5%. Peak memory: the server's ``VmHWM`` (peak resident set) from its start, through a
chat completion on the base model, the job, and a chat completion on the tuned model.

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
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
TRAIN = ROOT / "data" / "billing" / "train.jsonl"
VALID = ROOT / "data" / "billing" / "validation.jsonl"
TEST = ROOT / "data" / "billing" / "test.jsonl"
MODEL = "gpt-4.1-mini"  # served locally by SmolLM2-135M-Instruct
EPOCHS, SEED, RAG_SHARE, RENUMBERED_SHARE = 1, 0, 0.25, 0.5  # the shares: as notebook 03 trains
N_PROMPTS, MAX_TOKENS, CONCURRENCY = 32, 32, 16
LATENCY_TOKENS = 12  # the tuned-vs-base latency comparison: both models write exactly this many tokens


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def start_server(data_dir: Path):
    """Our server in its own process on a free loopback port; returns (server, client)."""
    import socket

    from openai import OpenAI

    from helpers.course.backend import local_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = local_server(port=port, data_dir=data_dir)
    return server, OpenAI(base_url=server.api_url, api_key="bench", max_retries=0, timeout=600)


def stop_server(server) -> None:
    from helpers.course.backend import stop_local_server

    stop_local_server(int(server.url.rsplit(":", 1)[1]))


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

def course_rows(work: Path) -> list[dict]:
    """The course train set with half its examples carrying retrieved codes, as notebook 03 trains it."""
    from helpers.course import retrieval
    from helpers.data import dataprep

    path = work / "train_rag.jsonl"
    retrieval.augment_file(TRAIN, path, RAG_SHARE, 5, SEED, RENUMBERED_SHARE)
    return dataprep.read_jsonl(path)


def settings(n_examples: int):
    """The server's "auto" hyperparameters for this many examples, for EPOCHS epochs."""
    from helpers.server import training
    from helpers.server.hyperparameters import auto_batch_size
    from helpers.server.methods import METHODS

    return training.TrainSettings(n_epochs=EPOCHS, batch_size=auto_batch_size(n_examples), seed=SEED,
                                  learning_rate_multiplier=METHODS["supervised"].auto_lr_multiplier)


def encoded(tokenizer, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    """The rows as the server encodes them: labels from the model's chat template (``helpers.server.chat_template``)."""
    from helpers.pricing.catalogue import resolve_base
    from helpers.server.chat_template import ChatTemplate
    from helpers.server.localmodels import stop_token_ids, weights_dir

    chat = ChatTemplate.of(tokenizer, stop_token_ids(weights_dir(resolve_base(MODEL)), tokenizer))
    return [chat.encode_chat(row["messages"]) for row in rows]


def validation_examples(tokenizer) -> list[tuple[list[int], list[int]]]:
    """The course validation set, encoded: what the job validates on, and what every contender is scored on."""
    from helpers.data.dataprep import read_jsonl

    return encoded(tokenizer, read_jsonl(VALID))


def validation_loss(model, tokenizer) -> float:
    from helpers.server.training import evaluate

    return evaluate(model, validation_examples(tokenizer), 8, tokenizer.eos_token_id, "cpu")[0]


def fp32_loop(rows: list[dict]) -> dict:
    """The usual transformers + peft loop in fp32: random batches, full logits (``labels=``), same hyperparameters
    and recipe (NEFTune noise included)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.pricing.catalogue import resolve_base
    from helpers.server.localmodels import weights_dir
    from helpers.server.training import neftune

    started = time.perf_counter()
    folder = weights_dir(resolve_base(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    examples = encoded(tokenizer, rows)  # labels: the assistant reply and its <|im_end|>; everything else is -100
    config = settings(len(examples))
    torch.manual_seed(SEED)
    model = get_peft_model(model, config.lora_config(model))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    total = math.ceil(len(examples) / config.batch_size) * EPOCHS
    warmup = max(1, total // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (total - s) / max(1, total - warmup)))
    valid = validation_examples(tokenizer)

    def batch_of(chunk):
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.eos_token_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (ids, lab) in enumerate(chunk):
            input_ids[r, : len(ids)], labels[r, : len(lab)], mask[r, : len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    @torch.no_grad()
    def evaluate(chunk):  # the job's validation metrics, computed the usual way (full logits)
        model.eval()
        losses = [float(model(**batch_of(chunk[i : i + config.batch_size])).loss) for i in range(0, len(chunk), config.batch_size)]
        model.train()
        return sum(losses) / len(losses)

    model.train()
    tokens, losses, step = 0, [], 0
    train_started = time.perf_counter()
    with neftune(model, config.neftune_alpha):  # the same recipe as the job (transformers' Trainer: neftune_noise_alpha)
        for epoch in range(EPOCHS):
            order = list(range(len(examples)))
            random.Random(SEED * 1000 + epoch).shuffle(order)
            for first in range(0, len(order), config.batch_size):
                batch = batch_of([examples[i] for i in order[first : first + config.batch_size]])
                tokens += int(batch["attention_mask"].sum())
                loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                step += 1
                if step % config.eval_every == 0 or step == total:  # as the job does: a validation batch, then the whole file
                    evaluate(random.Random(step).sample(valid, min(len(valid), config.batch_size)))
    evaluate(valid)
    train_s = time.perf_counter() - train_started
    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(out)
    seconds = time.perf_counter() - started
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lora_" not in n)
    return {"seconds": seconds, "train_seconds": train_s, "tokens": tokens, "steps": total,
            "valid_loss": validation_loss(model, tokenizer), "non_embedding_params": non_embedding}


def own_loop(rows: list[dict]) -> dict:
    """The server's own training code, in-process: load the base (compute dtype), train with the job's validation
    metrics, save the adapter."""
    from helpers.pricing import catalogue
    from helpers.server import localmodels, training

    started = time.perf_counter()
    base = catalogue.resolve_base(MODEL)
    tokenizer = localmodels.load_tokenizer(base)
    examples = encoded(tokenizer, rows)
    config = settings(len(examples))
    valid = validation_examples(tokenizer)  # the job reports validation metrics; so does this loop
    model = training.prepare_model(localmodels.load_model(base), config)
    training.train(model, tokenizer, examples, valid, config, on_step=lambda m: None, on_epoch_end=lambda *a: None,
                   should_stop=lambda: False)
    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(out)
    return {"seconds": time.perf_counter() - started, "valid_loss": validation_loss(model, tokenizer),
            "precision": str(localmodels.compute_dtype()).removeprefix("torch.")}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def same_length_latency(client, models: dict[str, str]) -> dict:
    """Latency of the held-out requests one at a time on each model, compared on the requests where every model wrote
    exactly LATENCY_TOKENS tokens (a model that stops early is not credited for it)."""
    runs: dict[str, list[tuple[float, int]]] = {}
    for name, model in models.items():
        runs[name] = []
        for messages in test_prompts():
            started = time.perf_counter()
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=LATENCY_TOKENS, temperature=0)
            runs[name].append((time.perf_counter() - started, reply.usage.completion_tokens))
    same = [i for i in range(len(test_prompts())) if all(runs[n][i][1] == LATENCY_TOKENS for n in models)]
    if len(same) < len(test_prompts()) // 2:
        raise SystemExit(f"only {len(same)} requests got {LATENCY_TOKENS} tokens from every model")
    return {name: {"mean_s": statistics.fmean(runs[name][i][0] for i in same), "requests": len(same)} for name in models}


def ours(rows: list[dict], work: Path) -> dict:
    """A real job through the HTTP API; the server's peak memory across base chat -> job -> tuned chat."""
    from helpers.server.records import JobStatus

    server, client = start_server(work / "server")
    try:
        pid = httpx.get(f"{server.url}/health", timeout=5).json()["pid"]
        path = work / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        file = client.files.create(file=path.open("rb"), purpose="fine-tune")
        valid = client.files.create(file=VALID.open("rb"), purpose="fine-tune")
        question = test_prompts()[0]
        client.chat.completions.create(model=MODEL, messages=question, max_tokens=16)  # the base model answers (and is loaded)
        config = settings(len(rows))
        started = time.perf_counter()
        job = client.fine_tuning.jobs.create(training_file=file.id, validation_file=valid.id, model=MODEL, seed=SEED,
                                             hyperparameters={"n_epochs": EPOCHS})
        while not JobStatus(job.status).finished:
            time.sleep(0.25)
            job = client.fine_tuning.jobs.retrieve(job.id)
        seconds = time.perf_counter() - started
        if job.status != "succeeded":
            raise SystemExit(f"the benchmark job {job.status}: {job.error}")
        if job.hyperparameters.batch_size != config.batch_size:
            raise SystemExit(f"the job ran batch {job.hyperparameters.batch_size}, the loops {config.batch_size}")
        client.chat.completions.create(model=job.fine_tuned_model, messages=question, max_tokens=16)
        latency = same_length_latency(client, {"base": MODEL, "tuned": job.fine_tuned_model})
        steps = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
        last = max(steps, key=lambda e: e.data["step"]).data
        resident = httpx.get(f"{server.url}/health", timeout=5).json()["memory"]["resident_mb"]
        return {"seconds": seconds, "steps": last["step"], "valid_loss": last["full_valid_loss"], "peak_rss_mb": peak_rss_mb(pid),
                "resident_mb": resident,
                "fine_tuned_model": job.fine_tuned_model, "hyperparameters": job.hyperparameters.model_dump(), "latency": latency}
    finally:
        stop_server(server)


def bench_train() -> dict:
    peak = matmul_gflops()
    with tempfile.TemporaryDirectory() as work:
        rows = course_rows(Path(work))
        print(f"training: {len(rows)} examples x {EPOCHS} epoch(s), auto hyperparameters; our server's job ...", flush=True)
        mine = ours(rows, Path(work))
    print(f"  ours: {mine['seconds']:.1f} s; the server's own loop in-process ...", flush=True)
    own = own_loop(rows)
    print(f"  own loop: {own['seconds']:.1f} s; fp32 transformers + peft loop ...", flush=True)
    fp32 = fp32_loop(rows)
    flops = 4 * fp32["non_embedding_params"] * fp32["tokens"]
    result = {
        "machine": machine(), "examples": len(rows), "epochs": EPOCHS, "hyperparameters": mine["hyperparameters"],
        "tokens": fp32["tokens"], "precision": own["precision"], "matmul_gflops": peak,
        "ours_s": mine["seconds"], "own_loop_s": own["seconds"], "fp32_loop_s": fp32["seconds"],
        "speedup_vs_fp32": fp32["seconds"] / mine["seconds"], "ours_over_own_loop": mine["seconds"] / own["seconds"],
        "ours_tokens_per_s": fp32["tokens"] / mine["seconds"], "own_tokens_per_s": fp32["tokens"] / own["seconds"],
        "fp32_tokens_per_s": fp32["tokens"] / fp32["seconds"],
        "ours_mfu": flops / mine["seconds"] / (peak * 1e9), "fp32_mfu": flops / fp32["seconds"] / (peak * 1e9),
        "valid_loss": {"ours": mine["valid_loss"], "own_loop": own["valid_loss"], "fp32_loop": fp32["valid_loss"]},
        "valid_loss_ratio": mine["valid_loss"] / fp32["valid_loss"], "server_peak_rss_mb": mine["peak_rss_mb"],
        "server_resident_after_job_mb": mine["resident_mb"],
        "latency": mine["latency"], "tuned_over_base_latency": mine["latency"]["tuned"]["mean_s"] / mine["latency"]["base"]["mean_s"],
    }
    print(f"""
training ({result['machine']}; {result['examples']} examples, {result['tokens']:,} tokens, {mine['hyperparameters']})
  ours (HTTP job, create -> succeeded, {own['precision']})  {mine['seconds']:7.1f} s  {result['ours_tokens_per_s']:6.0f} tokens/s  MFU {result['ours_mfu']:.1%}
  own loop (server's code, in-process)     {own['seconds']:7.1f} s  {result['own_tokens_per_s']:6.0f} tokens/s
  fp32 transformers + peft loop            {fp32['seconds']:7.1f} s  {result['fp32_tokens_per_s']:6.0f} tokens/s  MFU {result['fp32_mfu']:.1%}
  validation loss: ours {mine['valid_loss']:.4f}, own loop {own['valid_loss']:.4f}, fp32 loop {fp32['valid_loss']:.4f} (ratio {result['valid_loss_ratio']:.3f}; target within 5%)
  ours / own loop                          {result['ours_over_own_loop']:7.2f}   (target <= 1.10)
  server peak memory (VmHWM), start -> base chat -> job -> tuned chat: {mine['peak_rss_mb']:,.0f} MB   (target <= 1,536 MB)
  server resident memory after the course-size job and the latency runs: {mine['resident_mb']:,.0f} MB
  tuned / base latency, {mine['latency']['base']['requests']} requests one at a time, {LATENCY_TOKENS} tokens each: {result['tuned_over_base_latency']:.2f}  (mean {mine['latency']['tuned']['mean_s']:.3f} s vs {mine['latency']['base']['mean_s']:.3f} s; target <= 1.15)
  CPU fp32 matmul throughput               {peak:7.1f} GFLOP/s
training speed-up vs fp32 bare loop: {result['speedup_vs_fp32']:.2f}x   (target >= 2.0)""")
    return result


# -- inference ---------------------------------------------------------------------------------------

def test_prompts() -> list[list[dict]]:
    rows = [json.loads(line) for line in TEST.read_text().splitlines() if line.strip()][:N_PROMPTS]
    return [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]


def in_process(prompts: list[list[dict]]) -> dict:
    """transformers' generate, one prompt at a time, greedy, in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.pricing.catalogue import resolve_base
    from helpers.server.localmodels import weights_dir

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
    from helpers.course.sending import send_all

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
        tokens = sum(send_all(one, prompts, concurrency))
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


# -- llama.cpp against the server ----------------------------------------------------------------------
def bench_llama() -> dict:
    """The same model (the base, converted by llama.cpp's own converter to f16 GGUF) and the same held-out prompts,
    greedy, ``MAX_TOKENS`` each: the server one request at a time and 16 at a time over HTTP, llama.cpp one at a time
    with one and with two threads. Generation tokens/s; the ratio is llama.cpp (one thread) over the server."""
    from helpers.course import take_home
    from helpers.pricing.catalogue import resolve_base
    from helpers.server import llamacpp
    from helpers.server.localmodels import weights_dir

    prompts = test_prompts()
    with tempfile.TemporaryDirectory() as work:
        gguf = llamacpp.convert_model(weights_dir(resolve_base(MODEL)), Path(work) / "base-f16.gguf", "f16")
        server, client = start_server(Path(work) / "server")
        try:
            client.chat.completions.create(model=MODEL, messages=prompts[0], max_tokens=4)  # load the model once
            print(f"llama: {len(prompts)} held-out test requests, greedy, max_tokens {MAX_TOKENS} ...", flush=True)
            sequential = over_http(client, prompts, 1)
            batched = over_http(client, prompts, CONCURRENCY)
        finally:
            stop_server(server)
        local = {}
        for threads in (1, 2):
            llm = take_home.load(gguf, threads=threads)
            take_home.chat(llm, prompts[0], 4)  # warm
            replies = [take_home.chat(llm, m, MAX_TOKENS) for m in prompts]
            seconds = sum(r.seconds for r in replies)
            local[threads] = {"seconds": seconds, "tokens": sum(r.tokens for r in replies),
                              "tokens_per_s": sum(r.tokens for r in replies) / seconds,
                              "p50_s": statistics.median(r.seconds for r in replies)}
    result = {"machine": machine(), "prompts": len(prompts), "max_tokens": MAX_TOKENS, "server_sequential": sequential,
              "server_batched": batched, "llama_1_thread": local[1], "llama_2_threads": local[2],
              "llama_over_server": local[1]["tokens_per_s"] / sequential["tokens_per_s"]}
    print(f"""
llama.cpp against the server, the base model in f16 GGUF ({result['machine']})
  server, one request at a time          {sequential['tokens_per_s']:6.1f} tokens/s  p50 {sequential['p50_s']:.2f} s
  server, {CONCURRENCY} concurrent (batched)        {batched['tokens_per_s']:6.1f} tokens/s  p50 {batched['p50_s']:.2f} s
  llama.cpp, one thread, one at a time   {local[1]['tokens_per_s']:6.1f} tokens/s  p50 {local[1]['p50_s']:.2f} s
  llama.cpp, two threads, one at a time  {local[2]['tokens_per_s']:6.1f} tokens/s  p50 {local[2]['p50_s']:.2f} s
  llama.cpp (one thread) / server (one at a time)  {result['llama_over_server']:6.2f}x""")
    return result


# -- serving many tuned models: the in-process engine against vLLM ------------------------------------------------
N_ADAPTERS, SERVING_REQUESTS, SERVING_IN_FLIGHT = 8, 64, 16


def serve_process(data_dir: Path, engine: str, precision: str | None = None):
    """``workbook serve --engine ENGINE`` on a free loopback port (``WORKBOOK_PRECISION=precision`` if given);
    returns (process, client)."""
    import socket
    import subprocess

    from openai import OpenAI

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(data_dir.parent / f"serve-{engine}.log", "ab")
    env = {**os.environ, **({"WORKBOOK_PRECISION": precision} if precision else {})}
    process = subprocess.Popen([sys.executable, "-m", "helpers.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
                                "--engine", engine], stdout=log, stderr=subprocess.STDOUT, env=env)
    started = time.monotonic()
    while time.monotonic() - started < 900:
        if process.poll() is not None:
            raise RuntimeError(f"workbook serve --engine {engine} stopped; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                print(f"serving: --engine {engine} answers after {time.monotonic() - started:.0f} s", flush=True)
                return process, OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=900)
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"workbook serve --engine {engine} did not answer in 900 s")


def tuned_models(client, work: Path) -> list[str]:
    """``N_ADAPTERS`` different tuned models: N/2 small jobs of 2 epochs, each giving its model and its epoch-1
    checkpoint (each job trains on 10 other examples, with another seed)."""
    rows = TRAIN.read_text().splitlines()
    models: list[str] = []
    for job_index in range(N_ADAPTERS // 2):
        path = work / f"train-{job_index}.jsonl"
        path.write_text("\n".join(rows[job_index * 10:(job_index + 1) * 10]) + "\n")  # 10: OpenAI's least
        file = client.files.create(file=open(path, "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=file.id, model=MODEL, seed=job_index,
                                             hyperparameters={"n_epochs": 2, "batch_size": 4})
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
        assert job.status == "succeeded", job.error
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        models += [job.fine_tuned_model, next(c.fine_tuned_model_checkpoint for c in checkpoints if c.step_number < max(x.step_number for x in checkpoints))]
    return models


def serving_load(client, models: list[str], prompts: list[list[dict]]) -> dict:
    """``SERVING_REQUESTS`` requests, request i to model i mod N, ``SERVING_IN_FLIGHT`` at a time."""
    from helpers.course.sending import send_all

    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> int:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=models[i % len(models)], messages=prompts[i % len(prompts)],
                                               max_tokens=MAX_TOKENS, temperature=0)
        with lock:
            latencies.append(time.perf_counter() - started)
        return reply.usage.completion_tokens

    for model in models:  # each adapter loaded once before the clock starts, on either engine
        client.chat.completions.create(model=model, messages=prompts[0], max_tokens=2)
    started = time.perf_counter()
    tokens = sum(send_all(one, range(SERVING_REQUESTS), SERVING_IN_FLIGHT))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "p50_s": statistics.median(latencies), "p95_s": statistics.quantiles(latencies, n=20)[-1]}


def bench_serving() -> dict:
    """Many tuned models at once, as a workshop or a team serves them: ``SERVING_REQUESTS`` held-out requests spread
    over ``N_ADAPTERS`` different adapters, ``SERVING_IN_FLIGHT`` in flight, greedy, ``MAX_TOKENS`` each; the same
    models (one store) served by the in-process engine, then by vLLM (one server at a time). On a GPU the same command
    prints the GPU's figures."""
    prompts = test_prompts()
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "server"
        process, client = serve_process(data, "local")
        try:
            models = tuned_models(client, Path(work))
            print(f"serving: {SERVING_REQUESTS} requests over {len(models)} tuned models, {SERVING_IN_FLIGHT} in flight ...", flush=True)
            local = serving_load(client, models, prompts)
        finally:
            process.terminate()
            process.wait()
        started = time.monotonic()
        process, client = serve_process(data, "vllm")
        start_s = time.monotonic() - started
        try:
            vllm = serving_load(client, models, prompts)
            rss = peak_rss_mb(process.pid)
            vllm_pid = httpx.get(str(client.base_url).removesuffix("/v1/") + "/health").json()["inference"]["pid"]
            vllm_rss = sum(peak_rss_mb(pid) for pid in _tree(vllm_pid))
        finally:
            process.terminate()
            process.wait()
    result = {"machine": machine(), "requests": SERVING_REQUESTS, "adapters": len(models), "in_flight": SERVING_IN_FLIGHT,
              "max_tokens": MAX_TOKENS, "local": local, "vllm": vllm, "vllm_start_s": start_s, "server_peak_rss_mb": rss,
              "vllm_peak_rss_mb": vllm_rss, "vllm_over_local": vllm["tokens_per_s"] / local["tokens_per_s"]}
    print(f"""
serving {SERVING_REQUESTS} requests over {len(models)} tuned models, {SERVING_IN_FLIGHT} in flight ({result['machine']})
  in-process engine                      {local['tokens_per_s']:6.1f} tokens/s  p50 {local['p50_s']:.2f} s  p95 {local['p95_s']:.2f} s
  vLLM                                   {vllm['tokens_per_s']:6.1f} tokens/s  p50 {vllm['p50_s']:.2f} s  p95 {vllm['p95_s']:.2f} s
  vLLM / in-process                      {result['vllm_over_local']:6.2f}x
  vLLM: answers {start_s:.0f} s after `workbook serve --engine vllm`; peak resident {vllm_rss:,.0f} MB (its processes), our server {rss:,.0f} MB""")
    return result


def course_model(client, work: Path) -> str:
    """Notebook 03's model at its defaults, read from its ``parameters`` cell (the whole train set, a share with
    retrieved codes, some of those renumbered, its epochs, batch size, validation examples and seed)."""
    from helpers.course import retrieval
    from helpers.data import dataprep
    from helpers.reports import notebook_parameters

    p = notebook_parameters("03_training")
    train, valid = work / "train_rag.jsonl", dataprep.take(ROOT / p["VALID_PATH"], p["N_VALID"], work)
    retrieval.augment_file(dataprep.take(ROOT / p["TRAIN_PATH"], p["N_TRAIN"], work), train, p["RAG_SHARE"],
                           p["RETRIEVED_CODES"], p["SEED"], p["RENUMBERED_SHARE"])
    files = [client.files.create(file=open(path, "rb"), purpose="fine-tune").id for path in (train, valid)]
    job = client.fine_tuning.jobs.create(training_file=files[0], validation_file=files[1], model=p["MODEL"], seed=p["SEED"],
                                         suffix=p["SUFFIX"], hyperparameters={"n_epochs": p["N_EPOCHS"], "batch_size": p["BATCH_SIZE"]})
    started = time.monotonic()
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
    assert job.status == "succeeded", job.error
    print(f"agreement: 03's model trained in {time.monotonic() - started:.0f} s: {job.fine_tuned_model}", flush=True)
    return job.fine_tuned_model


def bench_agreement() -> dict:
    """The engines' token-for-token agreement: notebook 03's model (trained here at its defaults) and its base on the
    111 held-out requests, greedy, 32 tokens, through ``workbook serve --engine local`` and then ``--engine vllm``
    (one server at a time, one store), in fp32 and, where the CPU has bf16 kernels, in bf16. Counts the answers that
    are the same text, and the code accuracy of each engine."""
    from helpers.course.evaluation import evaluate
    from helpers.server.localmodels import compute_dtype, default_device

    examples = [json.loads(line) for line in TEST.read_text().splitlines() if line.strip()]
    precisions = ["fp32"] + (["bf16"] if str(compute_dtype(default_device())).endswith("bfloat16") else [])
    result: dict = {"machine": machine(), "requests": len(examples)}
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "server"
        process, client = serve_process(data, "local")
        try:
            tuned = course_model(client, Path(work))
        finally:
            process.terminate()
            process.wait()
        for precision in precisions:
            answers: dict[str, dict] = {}
            for engine in ("local", "vllm"):
                process, client = serve_process(data, engine, precision)
                try:
                    answers[engine] = {name: evaluate(client, model, examples) for name, model in (("base", MODEL), ("tuned", tuned))}
                finally:
                    process.terminate()
                    process.wait()
            for name in ("base", "tuned"):
                local, vllm = answers["local"][name], answers["vllm"][name]
                same = int((local["answer"] == vllm["answer"]).sum())
                result[f"{precision}_{name}"] = {"same": same, "local_code_accuracy": float(local["code_ok"].mean()),
                                                 "vllm_code_accuracy": float(vllm["code_ok"].mean())}
                print(f"agreement {precision} {name:<5}: {same}/{len(examples)} answers the same; code accuracy in-process "
                      f"{local['code_ok'].mean():.3f}, vLLM {vllm['code_ok'].mean():.3f}", flush=True)
    return result


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (vLLM's API server and its engine process)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    for child in children.read_text().split() if children.exists() else []:
        found += _tree(int(child))
    return found


# -- memory over the course ---------------------------------------------------------------------------
def bench_reports() -> dict:
    """Every notebook at its course size, in `make reports`' order, against one server of this run's own (as the
    notebooks start it): the server's resident memory after each, its peak, and what it holds at the end. The
    server must not grow without bound over a day of course-size jobs (it held 5.4 GB in the middle of the sequence
    and 8.1 GB after the notebooks' test run before the allocator was tamed and idle bases unloaded)."""
    import socket

    from helpers.course.backend import local_server, stop_local_server
    from helpers.paths import notebook_names
    from helpers.reports import REPORT_PARAMETERS, make_report, run_order

    with tempfile.TemporaryDirectory() as work, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        os.environ.update({"WORKBOOK_SERVER_DIR": str(Path(work) / "server"), "WORKBOOK_METRICS_DIR": str(Path(work) / "metrics"),
                           "WORKBOOK_PORT": str(port)})
        server = local_server(port, Path(work) / "server")
        after: dict[str, float] = {}
        try:
            for name in run_order(notebook_names()):
                started = time.perf_counter()
                make_report(name, REPORT_PARAMETERS.get(name), out_dir=Path(work) / "reports")
                health = httpx.get(f"{server.url}/health", timeout=10).json()
                after[name] = health["memory"]["resident_mb"]
                print(f"  {name:<28} {time.perf_counter() - started:7.0f} s   server resident {after[name]:7,.0f} MB", flush=True)
            peak = health["memory"]["peak_resident_mb"]
            held = [f"{m['base']} ({m['inference_adapters']} adapters)" for m in health["models"]]
        finally:
            stop_local_server(port)
    result = {"machine": machine(), "resident_after_mb": after, "peak_resident_mb": peak, "models_held": held}
    print(f"""
make reports ({result['machine']}), one server throughout:
  server resident memory after the whole sequence: {list(after.values())[-1]:,.0f} MB (peak {peak:,.0f} MB; largest after a notebook {max(after.values()):,.0f} MB)
  models held at the end: {', '.join(held) or 'none'}""")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["train", "inference", "llama", "serving", "agreement", "reports", "all"], nargs="?", default="all")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    results = {}
    if args.which in ("train", "all"):
        results["train"] = bench_train()
    if args.which in ("inference", "all"):
        results["inference"] = bench_inference()
    if args.which in ("llama", "all"):
        results["llama"] = bench_llama()
    if args.which in ("serving", "all"):
        results["serving"] = bench_serving()
    if args.which in ("agreement", "all"):
        results["agreement"] = bench_agreement()
    if args.which in ("reports", "all"):
        results["reports"] = bench_reports()
    (OUT / f"bench_model_{args.which}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
