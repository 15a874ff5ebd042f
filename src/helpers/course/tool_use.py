"""Function calling (notebook 08): two billing tools, a small data set of requests that call them, and scoring of the
calls a model makes (the right tool, arguments that are valid JSON, the right arguments).

The requests are made from the course's code table (``cpt_source.json``): training requests use a code's
training phrasings, test requests its held-out ones, so a test request is never seen in training.
"""
from __future__ import annotations

import json
import random
from typing import Any

import pandas as pd

from helpers.course.billing import TRAIN_PHRASES, load_codes, same_description
from helpers.course.sending import send_all
from helpers.data.validate import duplicate_key

SYSTEM_PROMPT = "You are a medical billing assistant. Answer every request with a call to one of your tools."
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "lookup_cpt_code", "description": "Find the CPT code of a procedure in the code book.",
        "parameters": {"type": "object", "properties": {"procedure": {"type": "string", "description": "the procedure, as the request names it"}},
                       "required": ["procedure"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "submit_claim", "description": "Submit a claim for a procedure whose CPT code is known.",
        "parameters": {"type": "object", "properties": {"cpt_code": {"type": "string", "pattern": "^[0-9]{5}$"},
                                                        "patient_age": {"type": "integer"}, "patient_sex": {"type": "string", "enum": ["F", "M"]}},
                       "required": ["cpt_code", "patient_age", "patient_sex"], "additionalProperties": False}}},
]
LOOKUP_FRAMES = ("What is the CPT code for {p}?", "Look up the code for {p}", "Which code covers {p}?", "Find the code: {p}")
CLAIM_FRAMES = ("Submit a claim for CPT {code}, {age}yo {sex}", "Bill code {code} for a {age} year old {sexword}",
                "Claim: {sexword}, age {age}, procedure code {code}", "File {code} for patient {sex}/{age}")


def _request(rng: random.Random, phrases: tuple[str, ...], code: str) -> tuple[str, str, dict[str, Any]]:
    if rng.random() < 0.5:
        phrase = rng.choice(phrases)
        return rng.choice(LOOKUP_FRAMES).format(p=phrase), "lookup_cpt_code", {"procedure": phrase}
    age, sex = rng.randint(19, 88), rng.choice("FM")
    text = rng.choice(CLAIM_FRAMES).format(code=code, age=age, sex=sex, sexword="female" if sex == "F" else "male")
    return text, "submit_claim", {"cpt_code": code, "patient_age": age, "patient_sex": sex}


def examples(split: str, n: int, seed: int) -> list[dict]:
    """``n`` chat examples with ``tools`` whose answer is one tool call (``split``: "train" uses each code's training
    phrasings, "test" its held-out ones)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    rng = random.Random(f"{split}-{seed}")
    codes = [c for c in load_codes() if c.in_training]
    out, seen = [], set()
    for i in range(n):
        code = codes[i % len(codes)]
        phrases = code.phrases[:TRAIN_PHRASES] if split == "train" else code.phrases[TRAIN_PHRASES:]
        text, name, arguments = _request(rng, phrases, code.code)
        while duplicate_key(text) in seen:  # no request twice, even up to case and punctuation
            text, name, arguments = _request(rng, phrases, code.code)
        seen.add(duplicate_key(text))
        call = {"id": f"call_{split}{i:04d}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
        out.append({"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text},
                                 {"role": "assistant", "tool_calls": [call]}], "tools": TOOLS})
    rng.shuffle(out)
    return out


def _expected(example: dict) -> tuple[str, dict[str, Any]]:
    call = example["messages"][-1]["tool_calls"][0]["function"]
    return call["name"], json.loads(call["arguments"])


def arguments_match(name: str, given: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The procedure named the same up to case and punctuation; a claim's fields exactly."""
    if name == "lookup_cpt_code":
        return set(given) == {"procedure"} and isinstance(given["procedure"], str) and same_description(given["procedure"], wanted["procedure"])
    return given == wanted


def score_call(message: Any, example: dict) -> dict[str, Any]:
    """One answer (a chat completion's message) against the expected call."""
    name, wanted = _expected(example)
    calls = message.tool_calls or []
    called = calls[0].function if calls else None
    try:
        given = json.loads(called.arguments) if called else None
    except ValueError:
        given = None
    return {"request": example["messages"][1]["content"], "expected": f"{name}({json.dumps(wanted)})",
            "answer": f"{called.name}({called.arguments})" if called else (message.content or ""),
            "called_a_tool": bool(calls), "right_tool": bool(called) and called.name == name,
            "valid_json": isinstance(given, dict),
            "right_arguments": bool(called) and called.name == name and isinstance(given, dict) and arguments_match(name, given, wanted)}


def evaluate(client, model: str, test: list[dict], *, tool_choice: str = "auto", max_tokens: int = 64, concurrency: int = 16) -> pd.DataFrame:
    """Ask ``model`` each test request with the tools, one call at most (``parallel_tool_calls=False``; with
    ``tool_choice="required"`` the answer must be a call, its arguments valid against the tool's schema); one scored
    row per request."""
    def one(example: dict) -> dict[str, Any]:
        reply = client.chat.completions.create(model=model, messages=example["messages"][:-1], tools=example["tools"],
                                               tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=max_tokens,
                                               temperature=0)
        return score_call(reply.choices[0].message, example)

    return pd.DataFrame(send_all(one, test, concurrency))


def summarize(results: pd.DataFrame) -> dict[str, float]:
    from helpers.course.evaluation import wilson_interval

    low, high = wilson_interval(int(results["right_arguments"].sum()), len(results))
    return {"n": len(results), **{column: float(results[column].mean()) for column in ("called_a_tool", "right_tool", "valid_json", "right_arguments")},
            "right_arguments_ci_low": low, "right_arguments_ci_high": high}


def tool_findings(base: dict, forced: dict, tuned: dict) -> list[str]:
    """What 08's table shows, in sentences computed from it (``forced``: the base model with ``tool_choice="required"``)."""
    lines = [f"On {tuned['n']:.0f} held-out requests the base model called the right tool for {base['right_tool']:.3f} of them "
             f"and the tuned model for {tuned['right_tool']:.3f}; with the right arguments: {base['right_arguments']:.3f} against "
             f"{tuned['right_arguments']:.3f} (95% interval {tuned['right_arguments_ci_low']:.3f}-{tuned['right_arguments_ci_high']:.3f})."]
    if tuned["right_arguments"] > base["right_arguments"]:
        lines.append("Fine-tuning taught the model when to call which tool and how to fill its arguments from the request. The calls "
                     "come back as `message.tool_calls`, as on OpenAI, so the code that runs the tools does not change.")
    else:
        lines.append("Fine-tuning did not improve the calls at these settings: more examples or epochs (exercise 1).")
    cut = forced["called_a_tool"] < 1
    lines.append(f"Forcing a call (tool_choice=\"required\") made the base answer with a call {forced['called_a_tool']:.3f} of the time"
                 + (" (the others ran out of tokens before the call was complete)" if cut else "")
                 + (", every one with schema-valid arguments" if forced["valid_json"] == forced["called_a_tool"] else
                    f", {forced['valid_json']:.3f} with valid JSON")
                 + f"; but the right tool only {forced['right_tool']:.3f} of the time and the right arguments "
                 f"{forced['right_arguments']:.3f}: constrained decoding fixes the form, not the content.")
    if tuned["valid_json"] > tuned["right_arguments"]:
        lines.append(f"Valid JSON is not the same as right: {tuned['valid_json']:.3f} of the tuned model's calls parsed, "
                     f"{tuned['right_arguments']:.3f} had the right values. Check the values before you act on a call.")
    return lines
