"""Data benchmark: validate + count tokens of a generated file, against two baselines in the same run.

    make bench-data                      # 1,000,000 examples
    python benchmarks/bench_data.py --examples 100000

Contenders, each in a fresh process so its peak memory (ru_maxrss) is its own:

* ``ours``: ``helpers.data.validate.validate_file`` (all checks, statistics, duplicates, cost);
* ``cookbook``: the OpenAI Cookbook data-prep loop, as written there: ``json.loads`` every line into a
  list, its format checks, ``len(encoding.encode(value))`` for every message value, everything kept in
  lists, numpy for the distributions (o200k_base, like ours);
* ``floor``: tiktoken alone encoding the very texts our recipe counts, already in memory (not timed:
  reading them). Two floors: ``per-text`` (``encode_ordinary`` once per text, tiktoken's usual API) and
  ``bulk`` (one ``encode_to_numpy`` call over all texts, the fastest path tiktoken has).

Targets (issue #2): >= 2x faster than the Cookbook loop, <= 1.5x the tiktoken-only floor, flat memory
(peak memory at N examples vs N/10). The generated file is plain chat data the Cookbook loop can read: it
crashes on tool calls and ``weight`` (see tests/test_validator.py), so those are left out here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def generate(path: Path, n: int, seed: int = 1) -> None:
    """n chat examples from the course's codes: 1-3 user/assistant turns, varied wording."""
    from helpers.course.billing import SYSTEM_PROMPT, load_codes

    rng = random.Random(seed)
    codes = load_codes()
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(n):
            messages = [{"role": "system", "content": SYSTEM_PROMPT}]
            for turn in range(rng.choice((1, 1, 1, 2, 3))):
                code = rng.choice(codes)
                messages.append({"role": "user", "content": f"{rng.choice(code.phrases)} (encounter {i}-{turn}, {rng.randint(18, 90)}yo)"})
                messages.append({"role": "assistant", "content": code.answer})
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    tmp.replace(path)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_ours(path: Path) -> dict:
    from helpers.data.validate import validate_file

    start = time.perf_counter()
    report = validate_file(path)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": report.total_tokens, "examples": report.n_examples, "ok": report.ok}


def run_cookbook(path: Path) -> dict:
    from collections import defaultdict

    import numpy as np

    from helpers.data.tokens import get_encoding

    encoding = get_encoding("o200k_base")  # tiktoken's own, with the offline rank files in place (not timed)
    start = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        dataset = [json.loads(line) for line in f]
    format_errors: dict[str, int] = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict):
            format_errors["data_type"] += 1
            continue
        messages = ex.get("messages", None)
        if not messages:
            format_errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if "role" not in message or "content" not in message:
                format_errors["message_missing_key"] += 1
            if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
                format_errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in ("system", "user", "assistant", "function"):
                format_errors["unrecognized_role"] += 1
            content = message.get("content", None)
            function_call = message.get("function_call", None)
            if (not content and not function_call) or not isinstance(content, str):
                format_errors["missing_content"] += 1
        if not any(message.get("role", None) == "assistant" for message in messages):
            format_errors["example_missing_assistant_message"] += 1

    def num_tokens_from_messages(messages, tokens_per_message=3, tokens_per_name=1):
        num_tokens = 0
        for message in messages:
            num_tokens += tokens_per_message
            for key, value in message.items():
                num_tokens += len(encoding.encode(value))
                if key == "name":
                    num_tokens += tokens_per_name
        return num_tokens + 3

    def num_assistant_tokens_from_messages(messages):
        return sum(len(encoding.encode(m["content"])) for m in messages if m["role"] == "assistant")

    n_missing_system = n_missing_user = 0
    n_messages, convo_lens, assistant_message_lens = [], [], []
    for ex in dataset:
        messages = ex["messages"]
        n_missing_system += not any(m["role"] == "system" for m in messages)
        n_missing_user += not any(m["role"] == "user" for m in messages)
        n_messages.append(len(messages))
        convo_lens.append(num_tokens_from_messages(messages))
        assistant_message_lens.append(num_assistant_tokens_from_messages(messages))
    for values in (n_messages, convo_lens, assistant_message_lens):
        np.min(values), np.max(values), np.mean(values), np.median(values), np.quantile(values, 0.05), np.quantile(values, 0.95)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": int(sum(convo_lens)), "examples": len(dataset)}


def run_floor(path: Path) -> dict:
    from helpers.data.chat_format import CHAT
    from helpers.data.token_counts import ToolTokenCache, role_token_table, token_parts
    from helpers.data.tokens import get_encoding

    encoding = get_encoding("o200k_base")
    roles, tools = role_token_table(encoding), ToolTokenCache(encoding)
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:  # not timed: the floor is encoding alone
        for line in f:
            texts.extend(token_parts(json.loads(line), CHAT, roles, tools).texts)
    encode = encoding.encode_ordinary
    start = time.perf_counter()
    per_text_tokens = sum(len(encode(t)) for t in texts)
    per_text = time.perf_counter() - start
    start = time.perf_counter()
    bulk = encoding.encode_to_numpy("<|endoftext|>".join(texts), allowed_special={"<|endoftext|>"}, disallowed_special=())
    bulk_seconds = time.perf_counter() - start
    return {"seconds": per_text, "bulk_seconds": bulk_seconds, "tokens_per_text": per_text_tokens,
            "bulk_tokens": int(len(bulk) - (len(texts) - 1)), "texts": len(texts)}


RUNNERS = {"ours": run_ours, "cookbook": run_cookbook, "floor": run_floor}


def measure(name: str, path: Path) -> dict:
    """Run one contender in a fresh process; return its result with its peak memory."""
    out = subprocess.run([sys.executable, __file__, "--run", name, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--run", nargs=2, metavar=("NAME", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        name, file = args.run
        result = RUNNERS[name](Path(file))
        print(json.dumps({**result, "peak_mb": peak_mb()}))
        return 0

    OUT.mkdir(exist_ok=True)
    n, small_n = args.examples, max(args.examples // 10, 1)
    paths = {}
    for count in (n, small_n):
        paths[count] = OUT / f"chat_{count}.jsonl"
        if not paths[count].exists():
            print(f"generating {count:,} examples -> {paths[count]}", flush=True)
            generate(paths[count], count)
    path = paths[n]
    size_mb = path.stat().st_size / 1e6
    print(f"file: {n:,} examples, {size_mb:,.0f} MB; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    ours = measure("ours", path)
    ours_small = measure("ours", paths[small_n])
    cookbook = measure("cookbook", path)
    floor = measure("floor", path)
    rows = [
        ("ours (validate_file)", ours["seconds"], ours["peak_mb"]),
        ("cookbook loop", cookbook["seconds"], cookbook["peak_mb"]),
        ("floor: tiktoken per text", floor["seconds"], None),
        ("floor: tiktoken bulk", floor["bulk_seconds"], None),
    ]
    print(f"\n{'contender':28} {'seconds':>8} {'examples/s':>12} {'MB/s':>8} {'peak MB':>8}")
    for label, seconds, mem in rows:
        print(f"{label:28} {seconds:8.2f} {n / seconds:12,.0f} {size_mb / seconds:8.1f} {'-' if mem is None else f'{mem:.0f}':>8}")
    print(f"\ntokens: ours {ours['tokens']:,}; cookbook {cookbook['tokens']:,}; "
          f"same texts through tiktoken: {floor['tokens_per_text']:,} (+ recipe overheads in ours/cookbook)")
    ratios = {
        "speed-up vs cookbook loop (target >= 2)": cookbook["seconds"] / ours["seconds"],
        "ours / per-text tiktoken floor (target <= 1.5)": ours["seconds"] / floor["seconds"],
        "ours / bulk tiktoken floor (stricter)": ours["seconds"] / floor["bulk_seconds"],
        f"peak memory at {n:,} / at {small_n:,} (flat ~ 1)": ours["peak_mb"] / ours_small["peak_mb"],
        "peak memory cookbook / ours": cookbook["peak_mb"] / ours["peak_mb"],
    }
    print()
    for label, value in ratios.items():
        print(f"{label:55} {value:6.2f}")
    same = ours["tokens"] == cookbook["tokens"]
    print(f"\nours and the cookbook count the same total: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
