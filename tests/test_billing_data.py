"""The course dataset: sizes, held-out paraphrases, unseen codes, reproducibility."""
from __future__ import annotations

import json

from conftest import DATA
from helpers import billing
from helpers.validate import duplicate_key, validate_file

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
