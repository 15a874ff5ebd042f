"""The helpers of notebooks 06 (epochs and learning rates) and 07 (garbage in): their data, audits and sentences."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import DATA

from helpers.course import experiments, fitting, label_audit
from helpers.course.billing import load_codes, parse_answer
from helpers.data.dataprep import DataError, write_jsonl
from helpers.data.validate import duplicate_key, validate_file

TRAIN = DATA / "billing" / "train.jsonl"


@pytest.fixture(scope="module")
def clean():
    return experiments.for_codes(TRAIN, experiments.pick_codes(12, 1))


def test_pick_codes_is_seeded_and_refuses_impossible_counts():
    trained = [c.code for c in load_codes() if c.in_training]
    assert experiments.pick_codes(8, 1) == experiments.pick_codes(8, 1) and len(experiments.pick_codes(8, 1)) == 8
    assert experiments.pick_codes(8, 1) != experiments.pick_codes(8, 2)
    assert experiments.pick_codes(0, 1) == trained
    with pytest.raises(DataError, match=f"N_CODES must be between 1 and {len(trained)}"):
        experiments.pick_codes(len(trained) + 1, 1)


def test_corrupted_labels_are_well_formed_wrong_and_pass_the_validator(clean, tmp_path):
    rows, kinds = label_audit.corrupt(clean, 0.4, seed=1)
    assert len(kinds) == round(len(clean) * 0.4) and len(rows) == len(clean)
    assert set(kinds.values()) == {label_audit.SWAPPED_CODE, label_audit.OTHER_PROCEDURE}
    table = {c.code: c.description for c in load_codes()}
    for i, row in enumerate(rows):
        before, after = parse_answer(clean[i]["messages"][-1]["content"]), parse_answer(row["messages"][-1]["content"])
        assert after is not None  # the right format, always
        assert row["messages"][:-1] == clean[i]["messages"][:-1]  # the request is untouched
        if i not in kinds:
            assert after == before
        elif kinds[i] == label_audit.SWAPPED_CODE:
            assert after[0] != before[0] and after[1] == before[1]  # the code swapped, the description kept
        else:
            assert after[0] != before[0] and after[1] == table[after[0]]  # another procedure's whole, consistent answer
    assert label_audit.corrupt(clean, 0.4, seed=1) == (rows, kinds)
    # systematic (the default): the wrong labels fill whole procedures (12 codes x 9: 43 rows are 4 procedures and 7
    # rows of a fifth), every wrong label of a procedure names the same other code, and 15%'s rows are among 40%'s
    wrong_codes: dict[str, set] = {}
    for i in kinds:
        wrong_codes.setdefault(parse_answer(clean[i]["messages"][-1]["content"])[0], set()).add(parse_answer(rows[i]["messages"][-1]["content"])[0])
    assert all(len(codes) == 1 for codes in wrong_codes.values()) and len(wrong_codes) == 5
    assert len(label_audit.mislabelled_procedures(clean, kinds)) == 4
    assert set(label_audit.corrupt(clean, 0.15, seed=1)[1]) <= set(kinds)
    random_rows, random_kinds = label_audit.corrupt(clean, 0.4, seed=1, systematic=False)
    assert any(len({parse_answer(random_rows[i]["messages"][-1]["content"])[0] for i in random_kinds
                    if clean[i]["messages"][-1]["content"] == clean[j]["messages"][-1]["content"]}) > 1 for j in random_kinds)
    assert label_audit.mislabelled_procedures(clean, random_kinds) == []  # spread thin: every procedure keeps right labels
    assert validate_file(write_jsonl(rows, tmp_path / "bad.jsonl"), model="gpt-4.1-mini").ok
    with pytest.raises(ValueError, match="between 0 and 1"):
        label_audit.corrupt(clean, 1.5, seed=1)


def test_padding_keeps_the_size_and_loses_distinct_requests(clean, tmp_path):
    rows, distinct = label_audit.pad(clean, 0.5, seed=1)
    assert len(rows) == len(clean) and distinct == len(clean) - round(len(clean) * 0.5)
    keys = {duplicate_key(r["messages"][1]["content"]) for r in rows}
    assert len(keys) == distinct  # every copy is a near-duplicate of a kept request
    answers = {r["messages"][1]["content"]: r["messages"][-1]["content"] for r in clean}
    assert all(answers.get(r["messages"][1]["content"], r["messages"][-1]["content"]) == r["messages"][-1]["content"] for r in rows)
    report = validate_file(write_jsonl(rows, tmp_path / "padded.jsonl"), model="gpt-4.1-mini")
    # every copy is warned about (a copy that repeats another copy exactly and the original up to case gets both warnings)
    assert report.ok and report.stats["exact_duplicates"] + report.stats["near_duplicates"] >= len(clean) - distinct
    clean_report = validate_file(write_jsonl(clean, tmp_path / "clean.jsonl"), model="gpt-4.1-mini")
    assert clean_report.stats["exact_duplicates"] + clean_report.stats["near_duplicates"] == 0


def test_the_audit_flags_every_swapped_code_and_scores_itself(clean):
    assert not label_audit.audit(clean)["table_ok"].eq(False).any()  # the course's own labels agree with the table
    variants = label_audit.make_variants(clean, [0.0, 0.4], 0.5, seed=1)
    assert variants.worst == "40% corrupted" and variants.corrupted["0% corrupted"] == {}
    audited = label_audit.audit(variants.rows[variants.worst])
    found = label_audit.audit_scores(audited, variants.corrupted[variants.worst])
    swapped = sum(k == label_audit.SWAPPED_CODE for k in variants.corrupted[variants.worst].values())
    assert found.loc["code table", f"{label_audit.SWAPPED_CODE}: found"] == swapped
    assert found.loc["code table", f"{label_audit.OTHER_PROCEDURE}: found"] == 0  # those agree with the table
    assert found.loc["either", "flagged"] == found.loc["either", "corrupted found"] + found.loc["either", "clean rows flagged"]
    assert found.attrs == {"corrupted": len(variants.corrupted[variants.worst]), "clean": len(clean) - found.attrs["corrupted"]}
    lines = label_audit.audit_findings(found)
    assert lines[0].startswith(f"The code-table check found {swapped} of the {found.attrs['corrupted']} corrupted rows")
    with pytest.raises(ValueError, match="rising order"):
        label_audit.make_variants(clean, [0.4, 0.0], 0, seed=1)


def summary(accuracy: float, low: float, high: float, fmt: float = 1.0) -> dict:
    return {"n": 36, "code_accuracy": accuracy, "code_accuracy_ci_low": low, "code_accuracy_ci_high": high, "format_compliance": fmt}


def test_noise_sentences_follow_the_numbers():
    names = label_audit.variant_names([0.0, 0.4], 0.5)
    apart = {names[0]: summary(0.8, 0.65, 0.9), names[1]: summary(0.3, 0.18, 0.46), names[2]: summary(0.6, 0.44, 0.74)}
    lines = label_audit.noise_findings(apart, [0.0, 0.4], 0.5, 54, 108)
    assert "0.800 with 0% of the labels wrong; 0.300 with 40%" in lines[0]
    assert "cost 0.500 of accuracy" in lines[1] and "the drop is real" in lines[1]
    assert "54 distinct requests" in lines[-1] and "lower than" in lines[-1] and "the intervals overlap" in lines[-1]
    close = {names[0]: summary(0.7, 0.5, 0.85), names[1]: summary(0.6, 0.42, 0.76)}
    assert "within the noise" in label_audit.noise_findings(close, [0.0, 0.4], 0, 108, 108)[1]
    none = {names[0]: summary(0.6, 0.42, 0.76), names[1]: summary(0.7, 0.5, 0.85)}
    assert "scored no worse" in label_audit.noise_findings(none, [0.0, 0.4], 0, 108, 108)[1]
    taught = {names[0]: {"procedures": 0, "held_out_share": 0.0}, names[1]: {"procedures": 3, "held_out_share": 0.375}}
    lines = label_audit.noise_findings(apart, [0.0, 0.4], 0, 108, 108, True, taught)
    assert "every example of 3 procedures wrong" in lines[2] and "would lose about 0.300 (0.800 x 0.375). It lost 0.500" in lines[2]
    assert "as faithfully as the right ones" in lines[2]
    assert "did not learn all of them" in label_audit.noise_findings(close, [0.0, 0.4], 0, 108, 108, True, taught)[2]
    assert not any("labelled every example" in line for line in label_audit.noise_findings(none, [0.0, 0.4], 0, 108, 108, True, taught))


def test_taught_wrong_counts_the_held_out_requests_of_wholly_mislabelled_procedures(clean):
    variants = label_audit.make_variants(clean, [0.0, 0.4], 0, seed=1)
    test = experiments.for_codes(DATA / "billing" / "test.jsonl", sorted({parse_answer(r["messages"][-1]["content"])[0] for r in clean}))
    taught = label_audit.taught_wrong(variants, test)
    wrong = label_audit.mislabelled_procedures(clean, variants.corrupted["40% corrupted"])
    assert taught["0% corrupted"] == {"procedures": 0, "held_out_share": 0.0}
    assert taught["40% corrupted"]["procedures"] == len(wrong) == 4
    share = sum(parse_answer(r["messages"][-1]["content"])[0] in wrong for r in test) / len(test)
    assert taught["40% corrupted"]["held_out_share"] == share and 0 < share < 1


def with_intervals(rows: list[dict], n: int = 24) -> pd.DataFrame:
    """Checkpoint accuracy rows as ``fitting.checkpoint_accuracy`` gives them: each with its 95% interval on ``n`` requests."""
    from helpers.course.evaluation import wilson_interval

    return pd.DataFrame([{**row, **dict(zip(("ci_low", "ci_high"), wilson_interval(round(row["code_accuracy"] * n), n)))} for row in rows])


def losses(values: list[float], train: list[float] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(1, len(values) + 1), "full_valid_loss": values,
                         "train_loss": train or [v * 0.9 for v in values]})


def test_the_shape_of_a_fit_is_read_from_its_validation_losses():
    assert fitting.shape(losses([1.0, 0.6, 0.5])) == "falling"
    assert fitting.shape(losses([0.15, 0.025, 0.017])) == "settled"  # 32% lower, but by 0.008: flat
    assert fitting.shape(losses([1.0, 0.4, 0.5, 0.7])) == "turned"
    assert fitting.shape(losses([1.0, 1.4, 1.3])) == "diverged"
    assert fitting.shape(losses([0.43])) == "single"
    # measured (37 examples, 12 epochs): validation flat over the last third while training loss fell 94%
    twelve = losses([1.53, 1.0, 0.88, 0.74, 0.65, 0.59, 0.45, 0.35, 0.312, 0.293, 0.290, 0.287],
                    [2.2, 1.16, 0.82, 0.58, 0.64, 0.42, 0.31, 0.2, 0.093, 0.032, 0.012, 0.0055])
    assert fitting.shape(twelve) == "plateau"
    # measured (06 at the defaults, 36 examples, 10 epochs): lowest 0.0395 at epoch 8, 0.0441 at 10 while held-out
    # accuracy rose: noise at the bottom, not memorising, and not a plateau either (the answers are predicted already)
    ten = losses([1.99, 0.93, 0.59, 0.61, 0.32, 0.19, 0.093, 0.0395, 0.0412, 0.0441], [1.6, 0.8, 0.7, 0.37, 0.2, 0.13, 0.09, 0.05, 0.02, 0.0016])
    assert fitting.shape(ten) == "settled"
    frames = {fitting.AUTO_RUN: losses([1.0, 0.6, 0.5]), "12 epochs": losses([1.0, 0.4, 0.5, 0.7], [0.9, 0.3, 0.1, 0.02])}
    accuracy = with_intervals([{"run": fitting.AUTO_RUN, "epoch": 3, "code_accuracy": 0.7, "format_compliance": 1.0},
                             {"run": "12 epochs", "epoch": 3, "code_accuracy": 0.75, "format_compliance": 1.0},
                             {"run": "12 epochs", "epoch": 4, "code_accuracy": 0.65, "format_compliance": 1.0}])
    table = fitting.fit_table(frames, accuracy)
    assert table.loc["12 epochs", "at epoch"] == 2 and table.loc["12 epochs", "best checkpoint accuracy"] == 0.75
    lines = fitting.fit_findings(table, fitting.AUTO_RUN)
    assert "under-trained, more epochs would help" in lines[0] and "began to memorise after epoch 2" in lines[1] and "0.020" in lines[1]
    assert lines[-2] == ("The lowest validation loss of all runs: 0.400, at epoch 2 of 12 epochs; its 2 later epochs (50% of its "
                         "training) did not lower it, and its checkpoint is among the last three a job keeps: call it by name "
                         "(3.3's table lists it).")
    assert lines[-1] == f"Against {fitting.AUTO_RUN} (0.700): no other run ended more accurate."


def test_06_says_which_run_broke_which_is_at_chance_and_when_nothing_memorised():
    """Measured (06 at the defaults, 12 codes x 3 examples): multiplier 10 began at a validation loss of 9.45 and no
    answer parsed; the auto run ended at 1 of 12 (chance); no run turned."""
    frames = {fitting.AUTO_RUN: losses([1.61, 0.69, 0.44]), "10 epochs": losses([1.99, 0.59, 0.19, 0.09, 0.06, 0.05, 0.045, 0.04, 0.041, 0.044]),
              "auto epochs, multiplier 4": losses([2.3, 0.6, 0.343]), "auto epochs, multiplier 10": losses([9.45, 7.06, 6.38])}
    accuracy = with_intervals([{"run": fitting.AUTO_RUN, "epoch": 3, "code_accuracy": 1 / 12, "format_compliance": 1.0},
                             {"run": "10 epochs", "epoch": 6, "code_accuracy": 0.7, "format_compliance": 1.0},
                             {"run": "10 epochs", "epoch": 10, "code_accuracy": 0.875, "format_compliance": 0.96},
                             {"run": "auto epochs, multiplier 4", "epoch": 3, "code_accuracy": 0.125, "format_compliance": 0.75},
                             {"run": "auto epochs, multiplier 10", "epoch": 3, "code_accuracy": 0.0, "format_compliance": 0.0}])
    lines = fitting.fit_findings(fitting.fit_table(frames, accuracy), fitting.AUTO_RUN, chance=1 / 12)
    assert "about chance (guessing among the codes scores 0.083)" in lines[0] and "under-trained" in lines[0]
    assert "a fit" in lines[1] and "chance" not in lines[1]
    assert "about chance" in lines[2]
    assert ("the step was too large: validation loss began at 9.45, 6 times the first epoch of auto epochs, and the model "
            "lost the answer format (0% of its answers parse)") in lines[3] and "below chance" in lines[3]  # 0.000: not "about"
    assert "at epoch 8 of 10 epochs" in lines[4] and "among the last three" in lines[4]
    assert lines[5].startswith("No run memorised here")
    # the same epochs with a larger step learned faster, and only the run that did not break is said to
    assert lines[6] == ("auto epochs, multiplier 4 trained as many epochs as auto epochs with a larger step and ended at a lower "
                        "validation loss (0.343 against 0.440): a larger step learns faster, up to the size where it breaks the model.")
    # x4 (3 of 24) over auto (2 of 24) is one request: higher, not shown more accurate; 8 epochs (21 of 24) is
    assert lines[7] == ("Against auto epochs (0.083): 10 epochs ended more accurate, beyond both 95% intervals; auto epochs, "
                        "multiplier 4 ended higher by less than the 95% intervals can separate (the intervals overlap).")
    # at course size (measured): x4 ended 1.6% below auto's loss and less accurate; no sentence may call that faster learning
    close = {fitting.AUTO_RUN: losses([1.2, 0.6, 0.438]), "auto epochs, multiplier 4": losses([1.9, 0.7, 0.431])}
    lower_but_worse = {**close, "auto epochs, multiplier 4": losses([1.9, 0.7, 0.35])}
    scored = with_intervals([{"run": fitting.AUTO_RUN, "epoch": 3, "code_accuracy": 0.167, "format_compliance": 1.0},
                             {"run": "auto epochs, multiplier 4", "epoch": 3, "code_accuracy": 0.083, "format_compliance": 1.0}])
    same = fitting.fit_findings(fitting.fit_table(close, scored), fitting.AUTO_RUN)
    assert ("auto epochs, multiplier 4 trained as many epochs as auto epochs and ended at about the same validation loss "
            "(0.431 against 0.438), within 5%: on this data the step size changed little.") in same
    assert not any("learns faster" in line for line in same)
    worse = fitting.fit_findings(fitting.fit_table(lower_but_worse, scored), fitting.AUTO_RUN)
    assert any("lower validation loss than auto epochs (0.350 against 0.438) but at a lower held-out accuracy (0.083 against "
               "0.167)" in line for line in worse) and not any("learns faster" in line for line in worse)
    # a turn three or more epochs before the end: its checkpoint is gone, and the finding says how to get that point back
    early = fitting.fit_table({fitting.AUTO_RUN: losses([1.0, 0.6, 0.5]), "8 epochs": losses([1.0, 0.4, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9])},
                              with_intervals([{"run": fitting.AUTO_RUN, "epoch": 3, "code_accuracy": 0.5, "format_compliance": 1.0},
                                            {"run": "8 epochs", "epoch": 8, "code_accuracy": 0.4, "format_compliance": 1.0}]))
    said = fitting.fit_findings(early, fitting.AUTO_RUN)
    assert "so epoch 3's is gone: to use that point, train again with n_epochs=3" in said[-2] and not said[-1].startswith("No run")


def test_runs_are_named_and_checked():
    runs = fitting.runs(12, [0.5, 4.0])
    assert list(runs) == [fitting.AUTO_RUN, "12 epochs", "auto epochs, multiplier 0.5", "auto epochs, multiplier 4"]
    assert runs["auto epochs, multiplier 4"] == {"n_epochs": "auto", "learning_rate_multiplier": 4.0}
    with pytest.raises(ValueError, match="EXCESSIVE_EPOCHS must be a whole number above 3"):
        fitting.runs(3, [0.5])
    with pytest.raises(ValueError, match="LEARNING_RATE_MULTIPLIERS"):
        fitting.runs(12, [0.5, 0.5])
    assert fitting.auto_epochs_table([20, 333]).loc[20, "auto epochs"] == 5


def test_preference_pairs_prefer_the_course_form_and_validate(tmp_path):
    from helpers.course import preferences
    from helpers.data.dataprep import read_jsonl

    rows = read_jsonl(TRAIN, 30)
    pairs = preferences.preference_pairs(rows, seed=1)
    assert len(pairs) == 30 and all(p["input"]["messages"] == r["messages"][:-1] for p, r in zip(pairs, rows))
    assert all(parse_answer(p["preferred_output"][0]["content"]) and not parse_answer(p["non_preferred_output"][0]["content"]) for p in pairs)
    assert all(parse_answer(p["preferred_output"][0]["content"])[0] in p["non_preferred_output"][0]["content"] for p in pairs)  # same code
    report = validate_file(write_jsonl(pairs, tmp_path / "pairs.jsonl"), model="gpt-4.1-mini")
    assert report.ok and report.format == "preference"
    with pytest.raises(ValueError, match="REJECTED_STYLES must name some of"):
        preferences.preference_pairs(rows, seed=1, styles=("rude",))


def test_the_dpo_judge_keeps_form_and_facts_apart():
    from helpers.course import preferences

    assert preferences.named_code("Lipid panel - CPT Code: 80061") == "80061"
    assert preferences.named_code("Sure! You would bill it under CPT code 93306. Let me know.") == "93306"
    assert preferences.named_code("99395") == "99395" and preferences.named_code("Nails - CPT Code: 117211") is None
    assert preferences.named_code("80061 or 80053") is None and preferences.named_code("80061, again 80061") == "80061"

    def scored(answers):
        return pd.DataFrame({"request": ["a", "b", "c"], "answer": answers, "expected_code": ["99395", "73610", "80061"],
                             "format_ok": [parse_answer(a) is not None for a in answers]})
    # the seen case: the model it started from answered 99395 as a bare code (right fact, wrong form); DPO wrote the
    # form with a wrong code: a form win and a fact loss, never a plain "DPO better"
    before = scored(["99395", "CPT Code: 73610 - Ankle X-ray", "Lipid panel - CPT Code: 80061"])
    after = scored(["Echo - CPT Code: 93306", "Ankle X-ray - CPT Code: 73610", "Lipid panel - CPT Code: 80061"])
    match = preferences.head_to_head(after, before)
    assert match == {"n": 3, "form": {"wins": 2, "ties": 1, "losses": 0, "win_rate": 2.5 / 3},
                     "facts": {"wins": 0, "ties": 2, "losses": 1, "win_rate": 1 / 3}}
    table = preferences.verdicts(after, before)
    assert list(table["request"]) == ["a", "b"] and list(table["facts"]) == ["SFT better", "tie"]
    assert list(table["form"]) == ["SFT + DPO better"] * 2


def test_a_mixed_style_file_rewrites_a_share_of_answers_in_unreadable_styles():
    from helpers.course import preferences
    from helpers.data.dataprep import read_jsonl

    rows = read_jsonl(TRAIN, 60)
    pairs = preferences.preference_pairs(rows, seed=1)
    mixed, rewritten = preferences.mixed_styles(rows, pairs, 0.5, seed=1)
    styles = [preferences.style_of(r["messages"][-1]["content"]) for r in mixed]
    assert 15 < rewritten < 45 and styles.count("course form") == len(rows) - rewritten
    assert set(styles) - {"course form"} <= set(preferences.REJECTED_STYLES)
    assert [r["messages"][:-1] for r in mixed] == [r["messages"][:-1] for r in rows]  # the requests are untouched
    assert preferences.mixed_styles(rows, pairs, 0.0, seed=1)[1] == 0 and preferences.mixed_styles(rows, pairs, 1.0, seed=1)[1] == 60
    with pytest.raises(ValueError, match="MIXED_SHARE must be between 0 and 1"):
        preferences.mixed_styles(rows, pairs, 1.5, seed=1)
    table = preferences.styles_table({"m": pd.DataFrame({"answer": [r["messages"][-1]["content"] for r in mixed] + ["hello"]})})
    assert table["m"].sum() == pytest.approx(1.0) and table.loc["other", "m"] == pytest.approx(1 / 61)


def test_dpo_findings_follow_the_numbers():
    from helpers.course import preferences

    def summary(fmt, code, low, high, facts):
        return {"n": 40, "format_compliance": fmt, "code_accuracy": code, "code_accuracy_ci_low": low,
                "code_accuracy_ci_high": high, "right_code_any_style": facts}

    def judged(form, facts):
        return {"n": 40, **{side: dict(zip(("wins", "ties", "losses", "win_rate"), counts)) for side, counts in
                            (("form", form), ("facts", facts))}}

    # form only: the facts did not move, the code accuracy gain is all form
    form_only = preferences.dpo_findings(summary(0.5, 0.5, 0.35, 0.65, 0.9), summary(1.0, 0.9, 0.8, 0.97, 0.9),
                                         judged((20, 20, 0, 0.75), (0, 40, 0, 0.5)), 0.1)
    assert form_only[0].startswith("Format compliance went from 0.500 to 1.000") and "overlap" not in form_only[0]
    assert "the facts did not move" in form_only[1] and "on facts, it won 0, tied 40 and lost 0" in form_only[2]
    assert "not better everywhere" not in " ".join(form_only) and "form is what DPO moved" in form_only[-1]
    # form bought with facts: the seen 09 run (0.7 -> 0.85 form, fewer right codes in any style)
    costly = preferences.dpo_findings(summary(0.7, 0.7, 0.55, 0.82, 0.95), summary(0.85, 0.8, 0.65, 0.9, 0.825),
                                      judged((6, 34, 0, 0.575), (0, 35, 5, 0.4375)), 0.1)
    assert "names the right code less often after DPO (-0.125)" in costly[1] and "better on facts on 5 request(s)" in costly[3]
    assert "form is what DPO moved" in costly[-1]
    both = preferences.dpo_findings(summary(0.5, 0.4, 0.25, 0.55, 0.5), summary(0.9, 0.8, 0.65, 0.9, 0.8),
                                    judged((16, 24, 0, 0.7), (12, 28, 0, 0.65)), 0.1)
    assert "0.300 of the +0.400 in code accuracy is codes the model now gets right" in both[1] and "Both moved" in both[-1]
    # the run at the defaults (1 DPO epoch): one more right code in 40 is one request's difference, not facts learned
    one = preferences.dpo_findings(summary(0.7, 0.7, 0.55, 0.82, 0.975), summary(0.95, 0.95, 0.83, 0.99, 1.0),
                                   judged((10, 30, 0, 0.625), (1, 39, 0, 0.5125)), 0.1)
    assert "one request's difference, so nearly all of code accuracy's +0.250 is form" in one[1]
    assert "form is what DPO moved" in one[-1] and "not better everywhere" not in " ".join(one)
    flat = preferences.dpo_findings(summary(0.5, 0.5, 0.35, 0.65, 0.6), summary(0.4, 0.4, 0.25, 0.55, 0.6),
                                    judged((0, 30, 10, 0.375), (0, 40, 0, 0.5)), 0.1)
    assert "(they overlap)" in flat[0] and "did not improve" in flat[-1]
    steps = pd.DataFrame({"train_loss": [0.693, 0.6, 0.5, 0.4, 0.3], "train_accuracy": [0.0, 0.5, 1.0, 1.0, 1.0]})
    curve = preferences.dpo_curve_findings(steps, 0.1)
    assert curve[0].startswith("The DPO loss started at 0.693") and "averaged 0.300 over the last 1 step." in curve[0]


def test_tool_examples_validate_and_calls_are_scored_on_three_levels(tmp_path):
    import json
    from types import SimpleNamespace

    from helpers.course import tool_use

    train, test = tool_use.examples("train", 60, 1), tool_use.examples("test", 20, 1)
    assert not {r["messages"][1]["content"] for r in train} & {r["messages"][1]["content"] for r in test}
    report = validate_file(write_jsonl(train, tmp_path / "tools.jsonl"), model="gpt-4.1-mini")
    assert report.ok and not report.warnings
    example = next(r for r in test if r["messages"][-1]["tool_calls"][0]["function"]["name"] == "submit_claim")
    wanted = json.loads(example["messages"][-1]["tool_calls"][0]["function"]["arguments"])
    call = lambda name, arguments: SimpleNamespace(tool_calls=[SimpleNamespace(function=SimpleNamespace(name=name, arguments=arguments))], content=None)  # noqa: E731
    right = tool_use.score_call(call("submit_claim", json.dumps(wanted)), example)
    assert right["right_tool"] and right["valid_json"] and right["right_arguments"]
    off_by_one = tool_use.score_call(call("submit_claim", json.dumps({**wanted, "patient_age": wanted["patient_age"] + 1})), example)
    assert off_by_one["valid_json"] and not off_by_one["right_arguments"]
    broken = tool_use.score_call(call("submit_claim", "{not json"), example)
    assert broken["right_tool"] and not broken["valid_json"] and not broken["right_arguments"]
    text = tool_use.score_call(SimpleNamespace(tool_calls=None, content="CPT 99213"), example)
    assert not text["called_a_tool"] and text["answer"] == "CPT 99213"
    with pytest.raises(ValueError, match="split must be"):
        tool_use.examples("validation", 5, 1)


def test_privacy_checks_find_identifiers_and_the_scrubber_removes_them():
    from helpers.data import privacy
    from helpers.data.dataprep import read_jsonl

    notes = read_jsonl(DATA / "billing" / "notes_with_identifiers.jsonl")
    found = privacy.scan(notes)
    assert set(found["check"]) == set(privacy.CHECKS) and found["line"].nunique() == len(notes)
    assert privacy.scan(privacy.scrub_rows(notes)).empty
    assert privacy.scrub("Pt name: John Carter, MRN 00482913") == "Pt name: [NAME], MRN [RECORD]"
    assert privacy.scan(read_jsonl(TRAIN)).empty  # the course's requests carry ages (under 90) and sex only
    assert privacy.scrub("Office visit - CPT Code: 99213, 45yo M") == "Office visit - CPT Code: 99213, 45yo M"  # codes and ages stay


def test_12s_grader_is_one_the_server_accepts_and_scores_code_and_form_apart(tmp_path):
    from helpers.course import rewards
    from helpers.server import graders

    grader = rewards.billing_grader(0.8)
    checked = graders.check(grader)  # the server's own check: the 400 a job would get
    assert checked.type == "multi"
    sandbox = graders.Sandbox.for_server(tmp_path)
    item = {"code": "99285"}
    right, wrong_code, wrong_form = ("Emergency department visit, high complexity - CPT Code: 99285",
                                     "Emergency department visit, high complexity - CPT Code: 99284", "99285 it is")
    scores = [graders.grade(checked, text, item, sandbox).score for text in (right, wrong_code, wrong_form)]
    assert scores == pytest.approx([1.0, 0.2, 0.0])
    with pytest.raises(ValueError, match="CODE_WEIGHT must be between 0 and 1"):
        rewards.billing_grader(1.5)


def test_12s_sentences_call_a_change_only_where_the_intervals_part():
    from helpers.course import rewards

    table = {"start": {"right": 41, "n": 48, "seconds": 0}, "RFT": {"right": 40, "n": 48, "seconds": 87},
             "SFT": {"right": 35, "n": 48, "seconds": 8}, "big": {"right": 12, "n": 48, "seconds": 5}}
    lines = rewards.compare_findings(table, "start", ["RFT", "SFT", "big"])
    assert lines[0].startswith("The starting model answered 41 of 48")
    assert "1 fewer right answers than the start" in lines[1] and "cannot tell it from no change" in lines[1]
    assert "6 fewer" in lines[2] and "cannot tell" in lines[2]  # 0.729 against 0.854: the intervals overlap at n=48
    assert "a change the intervals tell apart" in lines[3]
    samples = pd.DataFrame({"prompt": [0, 0, 1, 1, 2, 2], "reward": [1.0, 1.0, 0.2, 1.0, 0.2, 0.2]})
    assert rewards.learnable(samples) == {"prompts": 3, "answers differ": 1, "all right": 1, "all alike, not right": 1}
    two = rewards.compare_findings(table, "start", ["RFT", "SFT"])
    assert len(two) == 4 and two[3].startswith("RFT against SFT: 5 more right answers than SFT") and "10.9 times as long" in two[3]
    assert "cannot tell" in two[3]  # 40 against 35 of 48: the intervals overlap
    steps = rewards.step_findings({"RFT": 0.25, "SFT": 2.0})
    assert steps == ["RFT trained at learning-rate multiplier 0.25 and SFT at 2, each its method's \"auto\": SFT's step was 8 "
                     "times RFT's, so this compares the methods as each runs by default, not at one step size (exercise 4)."]
    assert "the same learning-rate multiplier (0.25)" in rewards.step_findings({"RFT": 0.25, "SFT": 0.25})[0]
    few = rewards.group_findings({"prompts": 32, "answers differ": 5, "all right": 21, "all alike, not right": 6})
    assert few[0].startswith("5 of 32 requests got answers that scored differently") and "expect little change" in few[1]
    assert len(rewards.group_findings({"prompts": 32, "answers differ": 16, "all right": 10, "all alike, not right": 6})) == 1
    assert "No request can teach" in rewards.group_findings({"prompts": 4, "answers differ": 0, "all right": 4, "all alike, not right": 0})[1]
    curves = pd.DataFrame({"step": [1, 2, 3, 4], "valid_reward_mean": [None, 0.7, None, 0.9], "train_kl": [0.0, 0.02, 0.05, 0.04]}).set_index("step")
    assert rewards.curve_findings(curves) == ["Mean reward on the validation requests: 0.70 at step 2, 0.90 at step 4 (a few requests: a small move is noise).",
                                              "KL to the starting model: at most 0.050 per answer token."]
