"""Scoring models on the billing task: exact match, format, per-code accuracy, latency, tokens, cost."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from helpers.course.billing import load_codes, parse_answer, same_description
from helpers.course.sending import send_all
from helpers.pricing.costs import has_openai_price, query_cost


def ask(client, model: str, requests: list[list[dict]], *, max_tokens: int = 32, concurrency: int = 16,
        response_formats: list[dict] | None = None) -> list[dict]:
    """Send requests concurrently (the local server batches those that arrive together). ``response_formats``: one
    ``response_format`` per request (structured output), whose JSON answer's ``answer`` field is the answer."""
    def one(request: tuple[list[dict], dict | None]) -> dict:
        messages, response_format = request
        started = time.perf_counter()
        extra = {"response_format": response_format} if response_format else {}
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0, **extra)
        answer = reply.choices[0].message.content or ""
        if response_format:
            answer = _answer_field(answer)
        return {"answer": answer, "latency_s": time.perf_counter() - started,
                "prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens}

    return send_all(one, zip(requests, response_formats or [None] * len(requests)), concurrency)


def _answer_field(text: str) -> str:
    """The ``answer`` of a structured answer (cut short by ``max_tokens``, it is not JSON: the text as it came)."""
    try:
        return str(json.loads(text)["answer"])
    except (ValueError, KeyError, TypeError):
        return text


CHOICE_MAX_TOKENS = 64


def choice_coverage(examples: list[dict], choices: Callable[[list[dict]], list[str]]) -> float:
    """The share of examples whose expected answer is among the choices offered: the ceiling of constrained accuracy."""
    return sum(e["messages"][-1]["content"] in choices(e["messages"][:-1]) for e in examples) / max(len(examples), 1)


def choice_format(answers: list[str]) -> dict:
    """A ``response_format`` that lets the model answer only one of ``answers``: constrained decoding, the way a
    prompt cannot force a small model into a form (``{"answer": "<one of them>"}``, strict JSON schema)."""
    return {"type": "json_schema", "json_schema": {"name": "billing_code", "strict": True, "schema": {
        "type": "object", "properties": {"answer": {"type": "string", "enum": list(answers)}},
        "required": ["answer"], "additionalProperties": False}}}


def evaluate(client, model: str, examples: list[dict], *, prompt: Callable[[list[dict]], list[dict]] | None = None,
             choices: Callable[[list[dict]], list[str]] | None = None, max_tokens: int = 32,
             concurrency: int = 16) -> pd.DataFrame:
    """One row per example: request, expected and given answers, correctness, latency and tokens.

    ``prompt`` rewrites each request's messages (for example to add retrieved context). ``choices`` gives, from a
    request's messages, the answers the model may write (constrained decoding: :func:`choice_format`)."""
    requests = [example["messages"][:-1] for example in examples]
    formats = None
    if choices is not None:
        formats = [choice_format(choices(messages)) for messages in requests]
        # the JSON around the answer and the longest code line take more than a plain answer's budget; the grammar
        # ends the answer when its JSON closes, so the larger cap costs nothing
        max_tokens = max(max_tokens, CHOICE_MAX_TOKENS)
    if prompt is not None:
        requests = [prompt(messages) for messages in requests]
    results = ask(client, model, requests, max_tokens=max_tokens, concurrency=concurrency, response_formats=formats)
    rows = []
    for example, result in zip(examples, results):
        expected = example["messages"][-1]["content"]
        parsed, wanted = parse_answer(result["answer"]), parse_answer(expected)
        rows.append({"request": example["messages"][-2]["content"], "expected": expected, **result,
                     "exact": result["answer"].strip() == expected, "format_ok": parsed is not None,
                     "code_ok": parsed is not None and parsed[0] == wanted[0], "expected_code": wanted[0]})
    return pd.DataFrame(rows)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% by default): honest for small n and for 0 or n successes."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share_with_interval(flags: pd.Series) -> tuple[float, float, float]:
    """The share of True in ``flags`` (one per request) and its 95% Wilson interval."""
    low, high = wilson_interval(int(flags.sum()), len(flags))
    return float(flags.mean()), low, high


def summarize(results: pd.DataFrame, *, priced_as: str, fine_tuned: bool) -> dict[str, float | None]:
    """Headline numbers with 95% Wilson intervals for code accuracy and exact match; cost per 1,000 queries at
    the OpenAI prices of ``priced_as`` (None for an open model, which has no OpenAI price)."""
    prompt, completion = results["prompt_tokens"].mean(), results["completion_tokens"].mean()
    code, code_low, code_high = share_with_interval(results["code_ok"])
    exact, exact_low, exact_high = share_with_interval(results["exact"])
    return {
        "n": len(results),
        "exact_match": exact,
        "exact_match_ci_low": exact_low,
        "exact_match_ci_high": exact_high,
        "format_compliance": float(results["format_ok"].mean()),
        "code_accuracy": code,
        "code_accuracy_ci_low": code_low,
        "code_accuracy_ci_high": code_high,
        "latency_p50_s": float(np.percentile(results["latency_s"], 50)),
        "latency_p95_s": float(np.percentile(results["latency_s"], 95)),
        "input_tokens": float(prompt),
        "output_tokens": float(completion),
        "usd_per_1000_queries": (1000 * query_cost(priced_as, prompt, completion, fine_tuned=fine_tuned)
                                 if has_openai_price(priced_as) else None),
    }


def per_code(results: pd.DataFrame) -> pd.DataFrame:
    return results.groupby("expected_code")["code_ok"].agg(["mean", "count"]).rename(columns={"mean": "accuracy"}).sort_values("accuracy")


def worst_mistakes(results: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    wrong = results[~results["exact"]]
    return wrong.sort_values(["format_ok", "code_ok"])[["request", "expected", "answer"]].head(n)


def _accuracy(summary: dict, key: str = "code_accuracy") -> str:
    n = int(summary["n"])
    return (f"{round(summary[key] * n)}/{n} ({summary[key]:.0%}; 95% CI "
            f"{summary[key + '_ci_low']:.0%}-{summary[key + '_ci_high']:.0%})")


def comparison_findings(base: dict, tuned: dict, unseen: dict[str, dict], n_unseen_codes: int) -> list[str]:
    """What notebook 04's tables show, in sentences computed from them."""
    lines = []
    gain = tuned["code_accuracy"] - base["code_accuracy"]
    verb = "beats" if gain > 0 else ("matches" if gain == 0 else "trails")
    lines.append(f"On {int(tuned['n'])} held-out requests the fine-tuned model names the right code {_accuracy(tuned)}, the base "
                 f"{_accuracy(base)}: fine-tuning {verb} the base by {abs(gain) * 100:.0f} percentage points. Exact answers: "
                 f"{_accuracy(tuned, 'exact_match')} against {_accuracy(base, 'exact_match')}.")
    if tuned["code_accuracy_ci_low"] > base["code_accuracy_ci_high"]:
        lines.append("The two 95% intervals do not overlap: the gain is not luck of the sample.")
    else:
        lines.append("The two 95% intervals overlap: on this sample the difference could be luck; run more requests "
                     "(`N_TEST = 0`) before concluding.")
    lines.append(f"Answers in the required format: fine-tuned {tuned['format_compliance']:.0%}, base "
                 f"{base['format_compliance']:.0%}.")
    lines.append(f"On {int(unseen['fine-tuned']['n'])} requests for {n_unseen_codes} codes training never saw: fine-tuned "
                 f"{unseen['fine-tuned']['code_accuracy']:.0%}, fine-tuned + RAG {unseen['fine-tuned + RAG']['code_accuracy']:.0%}, "
                 f"base + RAG {unseen['base + RAG']['code_accuracy']:.0%}.")
    if unseen["fine-tuned + RAG"]["code_accuracy"] > unseen["fine-tuned"]["code_accuracy"]:
        lines.append(f"Retrieval supplies what training could not, for {unseen['fine-tuned + RAG']['input_tokens'] - unseen['fine-tuned']['input_tokens']:.0f} "
                     "more input tokens a request.")
        if unseen["fine-tuned + RAG"]["code_accuracy"] < 0.8:
            lines.append("Only part of it, though. For every code it trained on, the tuned model can write the answer from "
                         "memory, candidates or not; what teaches it to copy a candidate instead are 03's renumbered examples "
                         "(`RENUMBERED_SHARE`), whose answer exists only in the candidates. With fewer of them it copies less "
                         "(benchmarks/RESULTS.md: none renumbered, 0.2 of these codes; all, 0.9).")
    else:
        lines.append("Retrieval did not help the fine-tuned model on these requests.")
    if unseen["base + RAG"]["format_compliance"] < 0.5:
        lines.append(f"The base model with retrieved codes answers in the required format only "
                     f"{unseen['base + RAG']['format_compliance']:.0%} of the time: the 135M stand-in cannot follow the "
                     "format from an instruction, so its answers cannot be scored, whatever the candidates. A large "
                     "model follows such an instruction; here the format has to be trained in.")
    return lines


MISTAKE_KINDS = ("not in the answer format", "a code that does not exist", "the right description, a wrong number",
                 "another real code, whole", "one code's number, another's description")


def mistake_kind(answer: str, expected_code: str) -> str:
    """Which of :data:`MISTAKE_KINDS` a wrong answer is."""
    table = {c.code: c.description for c in load_codes()}
    parsed = parse_answer(answer)
    if parsed is None:
        return MISTAKE_KINDS[0]
    code, description = parsed
    if code not in table:
        return MISTAKE_KINDS[1]
    if same_description(description, table[expected_code]):
        return MISTAKE_KINDS[2]
    if same_description(description, table[code]):
        return MISTAKE_KINDS[3]
    return MISTAKE_KINDS[4]


def mistakes(results: pd.DataFrame) -> pd.Series:
    """How many wrong answers of each kind (wrong means the code is wrong)."""
    wrong = results[~results["code_ok"]]
    kinds = pd.Series([mistake_kind(a, c) for a, c in zip(wrong["answer"], wrong["expected_code"])], dtype=object)
    return kinds.value_counts().reindex(list(MISTAKE_KINDS), fill_value=0).rename("wrong answers")


def mistake_findings(results: pd.DataFrame) -> list[str]:
    """What the per-code table and the mistakes show, in sentences computed from ``results``."""
    by_code = per_code(results)
    always, never = int((by_code["accuracy"] == 1).sum()), int((by_code["accuracy"] == 0).sum())
    median = results.groupby("expected_code").size().median()
    lines = [f"Of the {len(by_code)} codes in this sample, {always} were always right and {never} never "
             f"(with a median of {median:.0f} request{'' if median == 1 else 's'} a code, one answer moves a code's "
             "accuracy a lot)."]
    kinds = mistakes(results)
    if not kinds.sum():
        return lines + ["No answer named a wrong code."]
    lines.append(f"Of {kinds.sum()} wrong answers: " + "; ".join(f"{n} {kind}" for kind, n in kinds.items() if n) + ".")
    if kinds["the right description, a wrong number"]:
        lines.append("A right description with a wrong number means the model recognised the procedure but did not tie "
                     "it to its number: the numbers are arbitrary five-digit strings, learned from nine examples a code. "
                     "The code table catches such an answer; 05 filters the teacher's answers with exactly this check.")
    if kinds["another real code, whole"]:
        lines.append("A real code given whole, with its own description, is one procedure taken for another (here: "
                     f"{_confusions(results)}): the answer is consistent, so only the request shows it wrong.")
    return lines


def _confusions(results: pd.DataFrame, shown: int = 3) -> str:
    """The most frequent "asked for X, answered Y" pairs among answers that give another real code whole."""
    table = {c.code: c.description for c in load_codes()}
    wrong = results[~results["code_ok"]]
    pairs = pd.Series([f"{table[expected]} answered as {parse_answer(answer)[1]}"  # type: ignore[index]  (parsed: not None)
                       for answer, expected in zip(wrong["answer"], wrong["expected_code"])
                       if mistake_kind(answer, expected) == "another real code, whole"], dtype=object).value_counts()
    said = [pair + (f" ({n} times)" if n > 1 else "") for pair, n in pairs.head(shown).items()]
    return "; ".join(said) + (f"; and {len(pairs) - shown} other pairs" if len(pairs) > shown else "")


#: The prompting rung's runs in 04: the same requests, two prompts, each free and with the form imposed.
PROMPTING_RUNS = ("base + long prompt", "base + RAG", "base + long prompt, constrained", "base + RAG, constrained")


def prompting_findings(base: dict, prompting: dict[str, dict], offered: dict[str, dict[str, float]]) -> list[str]:
    """The prompting rung measured: the base model with prompting's long prompt and with retrieved codes, free and
    constrained to pick one line of a list (``prompting``: summaries from :func:`summarize`, keyed as
    ``PROMPTING_RUNS``; ``offered``: for each constrained run, ``coverage`` (the share of requests whose right answer
    was offered, from :func:`choice_coverage`) and ``choices`` (how many lines were offered each request))."""
    long, rag = prompting["base + long prompt"], prompting["base + RAG"]
    lines = [f"The base model with the whole code table and worked examples in its prompt ({long['input_tokens']:.0f} input "
             f"tokens) names the right code {_accuracy(long)} and answers in the format {long['format_compliance']:.0%} of "
             f"the time; with retrieved codes instead ({rag['input_tokens']:.0f} tokens), {_accuracy(rag)}, format "
             f"{rag['format_compliance']:.0%}; with the one-line instruction, {_accuracy(base)}."]
    free_fails = max(long["format_compliance"], rag["format_compliance"]) < 0.5
    if free_fails:
        lines.append("Left free, the prompting rung fails here, and the form is why: a 135M model continues the text it is "
                     "given rather than obeying an instruction about its form, and a long prompt only gives it more to continue.")
    else:
        lines.append("The prompt alone got the base model into the format much of the time: prompting is a real "
                     "contender here, at the price per query 01 shows.")
    above = {}
    parts = []
    for name, label in (("base + RAG, constrained", "the five retrieved codes"), ("base + long prompt, constrained", "the whole table")):
        run, chance = prompting[name], offered[name]["coverage"] / offered[name]["choices"]
        above[name] = run["code_accuracy_ci_low"] > chance
        parts.append(f"from {label} {_accuracy(run)}, with {offered[name]['choices']:.0f} lines offered (the right one among "
                     f"them for {offered[name]['coverage']:.0%} of the requests; a pick at random: {chance:.0%})")
    lines.append("With the form imposed instead (constrained decoding: `response_format` with a JSON schema whose answer must "
                 "be one line of the list offered), the base model picks the right code " + ", and ".join(parts) + ".")
    rag_above, long_above = above["base + RAG, constrained"], above["base + long prompt, constrained"]
    if rag_above and long_above:
        lines.append("Both beat a pick at random (each 95% interval starts above it): the prompt carries the answer, and what "
                     "the base model lacked was the form. "
                     "That is the prompting rung working, with the form supplied by the server instead of by training.")
    elif rag_above:
        lines.append("Five codes to choose from beat a pick at random (the 95% interval starts above it); the whole table did "
                     "not. So part of the rung holds even "
                     "at 135M: given the form and a short list, the base model reads the right code from its prompt more often "
                     "than chance, and the long prompt is more than it can use.")
    elif long_above:
        lines.append("The whole table beat a pick at random (the 95% interval starts above it) and the five retrieved codes did "
                     "not: retrieval's misses cost more than the long prompt's length here.")
    else:
        lines.append("Neither is shown to beat a pick at random (each 95% interval reaches down to it): on these requests the "
                     "local rung cannot show prompting working, even with the form imposed.")
    lines.append("What the local rung cannot show is a large model following the prompt's form on its own, which is why 01 "
                 "prices prompting as the first rung: measure it with BACKEND = \"openai\", or a bigger model brought to the "
                 "local server, before you fine-tune.")
    return lines


def seed_findings(tuned: dict, unseen: dict[str, dict]) -> list[str]:
    """The seed's claim for fine-tuning ("accuracy: Very High (domain)") set against this run's numbers."""
    seen, new, new_rag = tuned["code_accuracy"], unseen["fine-tuned"]["code_accuracy"], unseen["fine-tuned + RAG"]["code_accuracy"]
    verdict = ("holds for the codes it trained on" if tuned["code_accuracy_ci_low"] >= 0.8 else
               "is not reached for the codes it trained on" if seen < 0.5 else
               "is only partly reached for the codes it trained on")
    return [f"The course outline (the seed this workbook grew from) rates a fine-tuned model's accuracy \"Very High "
            f"(domain)\". Here that {verdict} ({_accuracy(tuned)}, "
            f"a 135M model after minutes of CPU training; a larger model learns the same data better), and \"domain\" means "
            f"exactly what was in the training file: codes it never saw {new:.0%}, the same with retrieval {new_rag:.0%}."]


#: The course outline's (the seed's) second takeaway, and the example its Step 3 gives: a code no training file holds.
STYLE_NOT_FACTS = "fine-tuning teaches style, not facts"
SEED_EXAMPLE_CODE = "66984"  # cataract removal with lens implant: in test_new_codes.jsonl, never in training


def takeaway_findings(base: dict, tuned: dict, unseen: dict[str, dict], unseen_results: dict[str, pd.DataFrame]) -> list[str]:
    """The outline's "fine-tuning teaches style, not facts" set against this run: the trained codes before and after
    fine-tuning (``base``, ``tuned``: summaries of the held-out test), the codes never trained on (``unseen``:
    summaries by run; ``unseen_results``: their answers), and the outline's own example where the sample holds it."""
    before, after = base["code_accuracy"], tuned["code_accuracy"]
    new, new_rag = unseen["fine-tuned"]["code_accuracy"], unseen["fine-tuned + RAG"]["code_accuracy"]
    learned = after - before >= 0.25
    lines = [f"The outline's second takeaway says \"{STYLE_NOT_FACTS}\". "
             + (f"Its letter does not hold here: on the codes in its training file the model went from {before:.0%} to "
                f"{after:.0%} right, and a code is a fact, learned from examples. " if learned else
                f"Here fine-tuning taught few facts of either kind: {before:.0%} to {after:.0%} on the codes it trained on. ")
             + (f"Its spirit does: on codes no example showed, the fine-tuned model is right {new:.0%} of the time, and "
                f"only retrieval, which puts the fact in the prompt, takes it to {new_rag:.0%}. Fine-tuning teaches the "
                "facts it is shown, and the form; it does not invent the others." if new <= 0.1 else
                f"On codes no example showed, it is right {new:.0%} of the time ({new_rag:.0%} with retrieval).")]
    plain, rag = unseen_results["fine-tuned"], unseen_results["fine-tuned + RAG"]
    asked = plain.index[plain["expected_code"] == SEED_EXAMPLE_CODE]
    if len(asked):
        row = asked[0]
        lines.append(f"The outline's own example, cataract surgery ({SEED_EXAMPLE_CODE}), is one of those codes: asked "
                     f"\"{plain.loc[row, 'request']}\", the fine-tuned model answered \"{plain.loc[row, 'answer']}\" "
                     f"({'right' if plain.loc[row, 'code_ok'] else 'wrong'}), and with retrieved codes "
                     f"\"{rag.loc[row, 'answer']}\" ({'right' if rag.loc[row, 'code_ok'] else 'wrong'}).")
    return lines


def token_findings(tuned: dict, openai_tokens: float) -> list[str]:
    """Why the server's input-token count differs from 01's (``openai_tokens``: the o200k_base count of the same
    requests)."""
    local = tuned["input_tokens"]
    more = "more" if local > openai_tokens else "fewer"
    return [f"The server counted {local:.1f} input tokens a request with SmolLM2's tokenizer; OpenAI's o200k_base counts "
            f"{openai_tokens:.1f} for the same messages (01 priced with that count). Two tokenizers cut the same text "
            f"differently: SmolLM2's 49k-piece vocabulary and its chat template give {abs(local / openai_tokens - 1):.0%} "
            f"{more} tokens here, so this notebook's dollar figures are that much {'above' if local > openai_tokens else 'below'} "
            "what OpenAI would bill for these requests."]
