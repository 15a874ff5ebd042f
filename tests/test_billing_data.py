"""The course dataset: sizes, held-out paraphrases, unseen codes, reproducibility."""
from __future__ import annotations

import json

import pytest
from conftest import DATA

from helpers.course import billing
from helpers.data.validate import duplicate_key, validate_file

BILLING = DATA / "billing"


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (BILLING / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def user_texts(rows: list[dict]) -> list[str]:
    return [r["messages"][1]["content"] for r in rows]


def test_regenerating_gives_the_shipped_files_byte_for_byte(tmp_path):
    counts = billing.write_datasets(tmp_path)
    for name in counts:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (BILLING / f"{name}.jsonl").read_bytes(), name


def test_sizes_and_codes():
    codes = billing.load_codes()
    assert len({c.code for c in codes if c.in_training}) >= 30
    assert len(load("train")) >= 300 and len(load("validation")) >= 60 and len(load("test")) >= 100 and len(load("pool")) >= 400
    assert all(c.code.isdigit() and len(c.code) == 5 for c in codes)


def test_every_labeled_split_is_valid_and_in_the_answer_format():
    for name in ("train", "validation", "test", "test_new_codes"):
        assert validate_file(BILLING / f"{name}.jsonl").ok, name
        for row in load(name):
            assert billing.parse_answer(row["messages"][-1]["content"]) is not None


def test_no_request_appears_in_two_files_and_test_phrasings_are_held_out():
    keys = {name: {duplicate_key(t) for t in user_texts(load(name))} for name in ("train", "validation", "test", "test_new_codes")}
    keys["pool"] = {duplicate_key(p["procedure"]) for p in load("pool")}
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not keys[a] & keys[b], (a, b)
    train = " | ".join(t.lower() for t in user_texts(load("train")))
    for code in billing.load_codes():
        for phrase in code.phrases[billing.TRAIN_PHRASES:]:
            assert phrase.lower() not in train, phrase


def test_codes_outside_training_never_reach_train_or_validation():
    held_back = {c.code for c in billing.load_codes() if not c.in_training}
    assert len(held_back) >= 5
    seen = {billing.parse_answer(r["messages"][-1]["content"])[0] for name in ("train", "validation") for r in load(name)}
    assert not seen & held_back
    assert {billing.parse_answer(r["messages"][-1]["content"])[0] for r in load("test_new_codes")} == held_back


def test_answer_format_round_trip():
    assert billing.parse_answer(billing.format_answer("99213", "Office visit")) == ("99213", "Office visit")
    for bad in ("99213", "x - CPT Code: 9921", "CPT Code: 99213 - Office visit", "Office visit - CPT Code: 99213, I think",
                " - CPT Code: 99213", "", None):
        assert billing.parse_answer(bad) is None


def test_the_pool_has_an_answer_key_of_training_codes_that_the_pool_file_does_not_show():
    key = billing.pool_answers()
    assert list(key) == [p["id"] for p in load("pool")]
    assert set(key.values()) == {c.code for c in billing.load_codes() if c.in_training}
    assert all(set(p) == {"id", "procedure"} for p in load("pool"))


def test_renumbered_examples_can_only_be_answered_by_copying_a_candidate(tmp_path):
    from helpers.course import retrieval

    source, target = DATA / "billing" / "train.jsonl", tmp_path / "train_rag.jsonl"
    augmented = retrieval.augment_file(source, target, 0.25, 5, seed=1, renumbered_share=1.0)
    assert augmented == retrieval.Augmented(with_codes=83, renumbered=83)
    plain, rows = load("train"), [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    table = {c.code: c for c in billing.load_codes()}
    renumbered = 0
    for before, after in zip(plain, rows):
        assert after["messages"][1:-1] == before["messages"][1:-1]  # the request is untouched
        if after == before:
            continue
        answer = after["messages"][-1]["content"]
        code, description = billing.parse_answer(answer)
        if code in table:  # retrieved codes only, answer as it was
            assert answer == before["messages"][-1]["content"]
            continue
        renumbered += 1
        assert int(code) in retrieval.UNASSIGNED_NUMBERS and code not in table
        right = table[billing.parse_answer(before["messages"][-1]["content"])[0]]
        assert description.lower() in [p.lower() for p in right.phrases[:billing.TRAIN_PHRASES]]  # never a held-out phrasing
        candidates = after["messages"][0]["content"].partition(retrieval.CANDIDATES_HEADING)[2].split("\n")
        assert candidates.count(answer) == 1 and right.answer not in candidates and len(candidates) == 5
    assert renumbered == 83
    assert validate_file(target, model="gpt-4.1-mini").ok
    # the same seed gives the same file; no renumbering leaves the examples with codes as before
    again = tmp_path / "again.jsonl"
    retrieval.augment_file(source, again, 0.25, 5, seed=1, renumbered_share=1.0)
    assert again.read_bytes() == target.read_bytes()
    assert retrieval.augment_file(source, again, 0.25, 5, seed=1).renumbered == 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="RENUMBERED_SHARE must be between 0 and 1"):
            retrieval.augment_file(source, again, 0.25, renumbered_share=bad)
    own = tmp_path / "own.jsonl"  # a team's own data: answers that are not course codes
    for answer in ("Hello!", [{"type": "text", "text": "Lipid panel - CPT Code: 80061"}]):  # not a course answer; content parts
        own.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]}) + "\n")
        with pytest.raises(ValueError, match=r"own.jsonl, example 1: .* set RENUMBERED_SHARE = 0"):
            retrieval.augment_file(own, again, 1.0, renumbered_share=1.0)
    assert retrieval.augment_file(own, again, 1.0).with_codes == 1
