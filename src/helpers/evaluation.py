"""Scoring models on the billing task: exact match, format, per-code accuracy, latency, tokens, cost."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pandas as pd

from helpers.billing import parse_answer
from helpers.costs import query_cost


def ask(client, model: str, requests: list[list[dict]], *, max_tokens: int = 32, concurrency: int = 8) -> list[dict]:
    """Send requests concurrently (the local server batches those that arrive together)."""
    def one(messages: list[dict]) -> dict:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return {"answer": reply.choices[0].message.content or "", "latency_s": time.perf_counter() - started,
                "prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens}

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, requests))


def evaluate(client, model: str, examples: list[dict], *, prompt: Callable[[list[dict]], list[dict]] | None = None,
             max_tokens: int = 32, concurrency: int = 8) -> pd.DataFrame:
    """One row per example: request, expected and given answers, correctness, latency and tokens.

    ``prompt`` rewrites each request's messages (for example to add retrieved context)."""
    requests = [example["messages"][:-1] for example in examples]
    if prompt is not None:
        requests = [prompt(messages) for messages in requests]
    results = ask(client, model, requests, max_tokens=max_tokens, concurrency=concurrency)
    rows = []
    for example, result in zip(examples, results):
        expected = example["messages"][-1]["content"]
        parsed, wanted = parse_answer(result["answer"]), parse_answer(expected)
        rows.append({"request": example["messages"][-2]["content"], "expected": expected, **result,
                     "exact": result["answer"].strip() == expected, "format_ok": parsed is not None,
                     "code_ok": parsed is not None and parsed[0] == wanted[0], "expected_code": wanted[0]})
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame, *, priced_as: str, fine_tuned: bool) -> dict[str, float]:
    """Headline numbers; cost per 1,000 queries at the OpenAI prices of ``priced_as``."""
    prompt, completion = results["prompt_tokens"].mean(), results["completion_tokens"].mean()
    return {
        "exact_match": float(results["exact"].mean()),
        "format_compliance": float(results["format_ok"].mean()),
        "code_accuracy": float(results["code_ok"].mean()),
        "latency_p50_s": float(np.percentile(results["latency_s"], 50)),
        "latency_p95_s": float(np.percentile(results["latency_s"], 95)),
        "input_tokens": float(prompt),
        "output_tokens": float(completion),
        "usd_per_1000_queries": 1000 * query_cost(priced_as, prompt, completion, fine_tuned=fine_tuned),
    }


def per_code(results: pd.DataFrame) -> pd.DataFrame:
    return results.groupby("expected_code")["code_ok"].agg(["mean", "count"]).rename(columns={"mean": "accuracy"}).sort_values("accuracy")


def worst_mistakes(results: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    wrong = results[~results["exact"]]
    return wrong.sort_values(["format_ok", "code_ok"])[["request", "expected", "answer"]].head(n)
