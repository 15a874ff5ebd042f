"""The validator: verdicts, line numbers, token counts and statistics, on valid and broken files."""
from __future__ import annotations

import json
import subprocess
import sys

import hostile_text
import numpy as np
import pytest
import tiktoken
from conftest import DATA, chat, distinct_chats

from helpers.data import tokens  # noqa: F401  (offline encodings)
from helpers.data.validate import MAX_PROBLEMS_PER_CODE, validate_file
from helpers.pricing.costs import auto_epochs, prices

O200K = tiktoken.get_encoding("o200k_base")
CL100K = tiktoken.get_encoding("cl100k_base")

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit."}}}}}]


def tool_example(i: int = 0) -> dict:
    return {"tools": TOOLS, "parallel_tool_calls": False, "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": f"Weather in Paris, question {i}?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        {"role": "assistant", "content": "It is 18 C and sunny in Paris."}]}


def reference_tokens(example: dict, enc: tiktoken.Encoding) -> tuple[int, int]:
    """An independent implementation of the documented recipe (see helpers.data.token_counts)."""
    n = lambda s: len(enc.encode(s, disallowed_special=()))  # noqa: E731
    total, assistant = 3, 0
    for m in example["messages"]:
        total += 3 + n(m["role"])
        learn = m["role"] == "assistant" and m.get("weight", 1) == 1
        if isinstance(m.get("content"), str):
            total += n(m["content"])
            assistant += n(m["content"]) if learn else 0
        if "name" in m:
            total += 1 + n(m["name"])
        for call in m.get("tool_calls", []):
            k = n(call["function"]["name"]) + n(call["function"]["arguments"])
            total += 3 + k
            assistant += k if learn else 0
    for tool in example.get("tools", []):
        f = tool["function"]
        total += 7 + n(f"{f['name']}:{f['description'].rstrip('.')}")
        props = f["parameters"]["properties"]
        total += 3 if props else 0
        for key, spec in props.items():
            total += 3
            if "enum" in spec:
                total += -3 + sum(3 + n(v) for v in spec["enum"])
            total += n(f"{key}:{spec['type']}:{spec['description'].rstrip('.')}")
    if example.get("tools"):
        total += 12
    return total, assistant


def codes(problems) -> list[tuple[int | None, str]]:
    return [(p.line, p.code) for p in problems]


# --- the Cookbook's known failures, kept as regression cases ----------------------------------------

def test_regression_tool_calls_and_tool_messages_are_valid(jsonl):
    report = validate_file(jsonl([tool_example(i) for i in range(12)]))
    assert report.ok, report.errors
    assert report.format == "chat"


def test_regression_weight_key_is_accepted_and_weight_zero_is_not_trained(jsonl):
    rows = distinct_chats(12)
    rows[0]["messages"][2]["weight"] = 0
    rows[1]["messages"][2]["weight"] = 1
    report = validate_file(jsonl(rows))
    assert report.ok, report.errors
    assert report.stats["assistant_tokens_per_example"]["min"] == 0  # weight 0: nothing trained
    assert codes(report.warnings) == [(1, "no_trained_message")]


def test_regression_gpt_4_1_counts_with_o200k_not_cl100k(jsonl):
    rows = [chat(user=f"Étude n°{i}: ünïcödé, emoji 🙂, code `x = y ** 2` and CJK 漢字") for i in range(12)]
    report = validate_file(jsonl(rows), model="gpt-4.1")
    expected = sum(reference_tokens(r, O200K)[0] for r in rows)
    assert report.stats["encoding"] == "o200k_base"
    assert report.total_tokens == expected
    assert expected != sum(reference_tokens(r, CL100K)[0] for r in rows)  # the encodings really differ here


def test_regression_percentiles_are_true_p5_and_p95(jsonl):
    rows = [chat(user="word " * i) for i in range(1, 101)]
    report = validate_file(jsonl(rows))
    totals = np.array([reference_tokens(r, O200K)[0] for r in rows])
    summary = report.stats["total_tokens_per_example"]
    assert summary["p5"] == pytest.approx(np.percentile(totals, 5))
    assert summary["p95"] == pytest.approx(np.percentile(totals, 95))
    assert summary["p5"] != pytest.approx(np.percentile(totals, 10))
    assert summary["median"] == pytest.approx(np.median(totals))
    assert summary["mean"] == pytest.approx(totals.mean(), abs=1e-3)
    assert (summary["min"], summary["max"]) == (totals.min(), totals.max())


# --- token totals equal tiktoken under the recipe ---------------------------------------------------

def test_token_totals_equal_the_recipe_for_course_data():
    path = DATA / "billing" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    report = validate_file(path)
    assert report.total_tokens == sum(reference_tokens(r, O200K)[0] for r in rows)
    assistant = [reference_tokens(r, O200K)[1] for r in rows]
    assert report.stats["assistant_tokens_per_example"]["max"] == max(assistant)


def test_token_totals_include_tools_names_and_tool_calls(jsonl):
    rows = [tool_example(i) for i in range(10)]
    rows.append({"messages": [{"role": "user", "content": "hi", "name": "alice"}, {"role": "assistant", "content": "hello"}]})
    report = validate_file(jsonl(rows))
    assert report.ok, report.errors
    assert report.total_tokens == sum(reference_tokens(r, O200K)[0] for r in rows)


def test_cost_follows_the_price_table_and_auto_epochs():
    path = DATA / "billing" / "train.jsonl"
    report = validate_file(path, model="gpt-4.1-nano")
    epochs = auto_epochs(report.n_examples)
    assert report.cost["n_epochs"] == epochs
    assert report.cost["trained_tokens"] == report.total_tokens * epochs
    assert report.cost["cost_usd"] == pytest.approx(report.total_tokens * epochs * prices("gpt-4.1-nano", fine_tuned=True).training / 1e6)


# --- broken files: right verdict, right line ---------------------------------------------------------

FLAWED_EXPECTED = {
    (3, "duplicate_example"), (4, "no_assistant_message"), (5, "invalid_json"), (6, "invalid_role"),
    (7, "invalid_weight"), (8, "weight_not_allowed"), (9, "blank_line"), (10, "invalid_tool_call"),
    (11, "unknown_tool_call_id"), (12, "invalid_content"), (13, "invalid_name"), (14, "unexpected_message_key"),
    (15, "not_utf8"), (16, "mixed_formats"), (17, "not_an_object"),
}


def test_flawed_teaching_file_reports_each_flaw_on_its_line():
    report = validate_file(DATA / "billing" / "flawed.jsonl")
    assert not report.ok
    assert set(codes(report.errors)) | set(codes(report.warnings)) == FLAWED_EXPECTED
    assert report.stats["valid_examples"] == 4  # lines 1, 2, 3 (a duplicate is still valid) and 18
    lines = {line for line, _ in codes(report.errors)}
    assert not lines & {1, 2, 18}


@pytest.mark.parametrize("row, code", [
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": True}]}, "invalid_weight"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]}, "missing_content"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}, "missing_content"),
    ({"messages": []}, "invalid_messages"),
    ({"messages": "hi"}, "invalid_messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}, {"role": "assistant", "content": "y"}]}, "invalid_content_part"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}, {"role": "assistant", "content": "y"}]}, "invalid_content_part"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]}, "invalid_tool_call"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "invalid_tool_call"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": []}]}, "invalid_tool_call"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "y"}]}, "invalid_tool_message"),
    ({"messages": [{"role": "function", "content": "r"}, {"role": "assistant", "content": "y"}]}, "invalid_name"),
    ({"tools": [{"type": "function"}], "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "invalid_tools"),
    ({"tools": [], "functions": [], "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "tools_and_functions"),
    ({"parallel_tool_calls": "yes", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "invalid_parallel_tool_calls"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "function_call": {"name": "f", "arguments": "nope"}}]}, "invalid_tool_call"),
    ({"prompt": "x", "completion": "y"}, "unknown_format"),
    ('{"messages": [{"role": "user", "content": NaN}]}', "invalid_json"),
])
def test_each_rule_has_its_code_and_line(jsonl, row, code):
    rows = distinct_chats(11)
    rows.insert(5, row)
    report = validate_file(jsonl(rows))
    assert not report.ok
    assert (6, code) in codes(report.errors), report.errors
    assert all(p.message for p in report.errors)


def test_legacy_functions_and_function_call_are_valid(jsonl):
    functions = [{"name": "lookup", "description": "Look up.", "parameters": {"type": "object", "properties": {}}}]
    rows = [{"functions": functions, "messages": [
        {"role": "user", "content": f"q{i}"},
        {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": "{}"}},
        {"role": "function", "name": "lookup", "content": "r"},
        {"role": "assistant", "content": "done"}]} for i in range(10)]
    report = validate_file(jsonl(rows))
    assert report.ok, report.errors


def test_text_parts_and_user_images_are_valid(jsonl):
    rows = distinct_chats(10)
    rows[0]["messages"][1]["content"] = [{"type": "text", "text": "what is"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    rows[1]["messages"][2]["content"] = [{"type": "text", "text": "Lipid panel - CPT Code: 80061"}]
    assert validate_file(jsonl(rows)).ok


def test_crlf_and_trailing_blank_lines_are_fine(jsonl):
    report = validate_file(jsonl(distinct_chats(10), newline="\r\n", trailing="\r\n\r\n"))
    assert report.ok, report.errors
    assert report.n_examples == 10


def test_byte_order_mark_is_reported_on_line_1(jsonl, tmp_path):
    path = jsonl(distinct_chats(10))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert codes(validate_file(path).errors) == [(1, "utf8_bom")]


def test_too_few_examples_and_empty_file(jsonl):
    assert codes(validate_file(jsonl(distinct_chats(9))).errors) == [(None, "too_few_examples")]
    empty = jsonl([], name="empty.jsonl")
    empty.write_bytes(b"")
    assert codes(validate_file(empty).errors) == [(None, "empty_file")]


def test_mixed_file_is_an_error_at_the_first_other_line(jsonl):
    dpo = {"input": {"messages": [{"role": "user", "content": "x"}]},
           "preferred_output": [{"role": "assistant", "content": "a"}],
           "non_preferred_output": [{"role": "assistant", "content": "b"}]}
    rows = distinct_chats(10) + [dpo, dpo]
    assert codes(validate_file(jsonl(rows)).errors) == [(11, "mixed_formats"), (12, "mixed_formats")]


def test_preference_files_are_detected_and_checked(jsonl):
    def pair(i):
        return {"input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Code {i}?"}]},
                "preferred_output": [{"role": "assistant", "content": "Lipid panel - CPT Code: 80061"}],
                "non_preferred_output": [{"role": "assistant", "content": "It might be a lipid test."}]}
    rows = [pair(i) for i in range(10)]
    report = validate_file(jsonl(rows))
    assert report.ok and report.format == "preference"
    enc = O200K
    n = lambda s: len(enc.encode(s))  # noqa: E731
    expected = sum(3 + (3 + n("system") + n("Be brief.")) + (3 + n("user") + n(f"Code {i}?"))
                   + 2 * (3 + n("assistant")) + n("Lipid panel - CPT Code: 80061") + n("It might be a lipid test.") for i in range(10))
    assert report.total_tokens == expected
    broken = rows[:9] + [{"input": {"messages": []}, "preferred_output": [{"role": "user", "content": "x"}]}]
    assert set(codes(validate_file(jsonl(broken, name="b.jsonl")).errors)) == {(10, "missing_key"), (10, "invalid_messages"), (10, "invalid_output")}


def test_over_token_limit_is_a_warning_and_billing_is_capped(jsonl):
    rows = distinct_chats(10) + [chat(user="lorem " * 17_000)]
    report = validate_file(jsonl(rows), model="gpt-3.5-turbo")
    assert report.ok
    assert (11, "over_token_limit") in codes(report.warnings)
    assert report.stats["over_token_limit"] == 1
    assert report.cost["cost_usd"] is None and "No fine-tuned price" in report.cost["note"]
    assert report.stats["billing_tokens_per_epoch"] == report.total_tokens - (reference_tokens(rows[-1], CL100K)[0] - 16_385)


def test_exact_and_near_duplicates(jsonl):
    rows = distinct_chats(10)
    rows.append(rows[2])                                 # exact duplicate of line 3
    rows.append(chat(user="LIPID panel, number 4!"))     # near duplicate of line 5
    report = validate_file(jsonl(rows))
    assert {(12, "near_duplicate_example"), (11, "duplicate_example")} <= set(codes(report.warnings))
    assert (report.stats["exact_duplicates"], report.stats["near_duplicates"]) == (1, 1)


def test_missing_system_and_user_messages_are_counted(jsonl):
    rows = distinct_chats(8) + [chat(system=None), {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}]
    stats = validate_file(jsonl(rows)).stats
    assert (stats["missing_system"], stats["missing_user"]) == (1, 1)


def test_problems_are_capped_per_code_but_all_counted(jsonl):
    rows = ["{not json"] * 500 + distinct_chats(10)
    report = validate_file(jsonl(rows))
    assert len([p for p in report.errors if p.code == "invalid_json"]) == MAX_PROBLEMS_PER_CODE
    assert report.stats["error_counts"]["invalid_json"] == 500


def test_streaming_handles_chunks_larger_than_one_batch(jsonl):
    rows = [chat(user=f"procedure {i} " + "x" * (i % 7)) for i in range(25_000)]  # > 2 chunks of texts
    report = validate_file(jsonl(rows))
    assert report.ok
    assert report.total_tokens == sum(reference_tokens(r, O200K)[0] for r in rows)


# --- the command line -------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_json_verdict_and_exit_codes(jsonl):
    good = run_cli("validate", str(jsonl(distinct_chats(10))), "--json")
    assert good.returncode == 0, good.stderr
    out = json.loads(good.stdout)
    assert set(out) >= {"ok", "format", "n_examples", "errors", "warnings", "total_tokens", "stats", "cost"}
    assert out["ok"] is True and out["n_examples"] == 10 and out["format"] == "chat"
    bad = run_cli("validate", str(DATA / "billing" / "flawed.jsonl"), "--json")
    assert bad.returncode == 1
    errors = json.loads(bad.stdout)["errors"]
    assert {"line": 5, "code": "invalid_json"} in [{"line": e["line"], "code": e["code"]} for e in errors]


@pytest.mark.parametrize("args, needle", [
    (("validate", "/no/such/file.jsonl"), "No such file"),
    (("validate", str(DATA)), "is a folder"),
    (("validate", str(DATA / "billing" / "train.jsonl"), "--model", "gpt-9"), "Unknown model 'gpt-9'"),
    (("validate",), "the following arguments are required"),
])
def test_cli_usage_errors_exit_2_without_a_traceback(args, needle):
    result = run_cli(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_text_summary_names_lines():
    result = run_cli("validate", str(DATA / "billing" / "flawed.jsonl"))
    assert result.returncode == 1
    assert "NOT READY" in result.stdout and "line 15: [not_utf8]" in result.stdout


# --- the one-call encoder is exact ------------------------------------------------------------------

@pytest.mark.parametrize("encoding", [O200K, CL100K], ids=lambda e: e.name)
def test_encode_lengths_equals_encode_ordinary_on_adversarial_text(encoding):
    import random

    from helpers.data.validate import encode_lengths

    rng = random.Random(7)
    alphabet = list("ab cd\n\n\t  .,!?'sll've 123 4567 é漢字🙂\r\n") + ["'s", " '", "\u00a0", "\u2028", "<|", "|>", "endoftext"]
    texts = ["", " ", "\n", "  \n ", "a ", " a", "\n\n", "x\r\n", "123456", "<|endoftext", "|>"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(20_000)]
    expected = [len(encoding.encode_ordinary(t)) for t in texts]
    assert encode_lengths(encoding, texts).tolist() == expected
    with_separator = texts[:50] + ["a <|endoftext|> b", "<|endoftext|>"]  # counted as plain text, one by one
    assert encode_lengths(encoding, with_separator).tolist() == [len(encoding.encode_ordinary(t)) for t in with_separator]
    assert encode_lengths(encoding, []).tolist() == []


# --- hostile text (the shared corpus: tests/hostile_text.py) -------------------------------------------

@pytest.mark.parametrize("name", sorted(hostile_text.NOT_TEXT))
def test_strings_that_are_json_but_not_text_are_a_line_error_with_a_stable_code(tmp_path, name):
    value, words = hostile_text.NOT_TEXT[name]
    rows = distinct_chats(10)
    rows[6]["messages"][0]["content"] = value
    path = tmp_path / "hostile.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json.dumps writes the escapes: valid JSON
    result = run_cli("validate", str(path), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(7, "invalid_text")]
    assert words in report["errors"][0]["message"] and "messages[0].content" in report["errors"][0]["message"]


@pytest.mark.parametrize("name", sorted(hostile_text.BAD_LINES))
def test_lines_that_are_not_text_or_nest_too_deep_are_a_line_error(tmp_path, name):
    line, code = hostile_text.BAD_LINES[name]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in distinct_chats(10)) + line + b"\n")
    report = validate_file(path)
    assert [(e.line, e.code) for e in report.errors] == [(11, code)]


@pytest.mark.parametrize("name", sorted(hostile_text.ODD_BUT_TEXT))
def test_odd_but_real_text_is_accepted(tmp_path, name):
    rows = distinct_chats(10)
    rows[3]["messages"][0]["content"] += hostile_text.ODD_BUT_TEXT[name]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert validate_file(path).errors == []


def test_a_10_mb_line_is_counted_and_warned_about_not_a_crash(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in distinct_chats(10)) + hostile_text.TEN_MB_LINE + b"\n")
    report = validate_file(path)
    assert report.errors == [] and any(w.line == 11 for w in report.warnings)
