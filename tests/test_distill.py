"""Distillation's filter and what it measures, on answers a teacher could give (no model needed)."""
from __future__ import annotations

import pandas as pd

from helpers.course import billing, distill


def answers(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"pool_id": [r[0] for r in rows], "answer": [r[1] for r in rows], "completion_id": "c"})


def test_the_filter_drops_an_answer_whose_description_belongs_to_another_code():
    table = {c.code: c.description for c in billing.load_codes()}
    checked = distill.filter_answers(answers(
        ("p1", f"{table['85025'].upper()}. - CPT Code: 85025"),   # right pair, other case and punctuation: kept
        ("p2", f"{table['45378']} - CPT Code: 99214"),            # one code's number, another's description
        ("p3", "Nothing at all - CPT Code: 00000"),              # no such code
        ("p4", "85025"),                                          # not in the format
    ))
    assert checked["keep"].tolist() == [True, False, False, False]
    assert checked[["format_ok", "known_code", "description_matches_code"]].sum().tolist() == [3, 2, 1]
    assert checked.loc[0, "answer"] == f"{table['85025']} - CPT Code: 85025"  # rewritten in the table's words
    assert checked.loc[1, "answer"] == f"{table['45378']} - CPT Code: 99214"  # a dropped answer stays as it was


def test_label_accuracy_and_its_sentences_follow_the_answer_key():
    table = {c.code: c.description for c in billing.load_codes()}
    checked = distill.filter_answers(answers(
        ("p1", f"{table['85025']} - CPT Code: 85025"),
        ("p2", f"{table['45378']} - CPT Code: 99214"),
        ("p3", f"{table['45378']} - CPT Code: 45378"),
        ("p4", f"{table['45378']} - CPT Code: 80061")))
    key = {"p1": "85025", "p2": "45378", "p3": "99214", "p4": "80061"}
    labels = distill.label_accuracy(checked, key)
    assert labels.loc["every answer"].tolist() == [4, 2, 0.5]
    assert labels.loc["kept by the filter"].tolist() == [2, 1, 0.5]
    assert labels.loc["dropped by the filter", "right code"] == 1
    lines = distill.filter_findings(labels.to_dict(orient="index"))
    assert lines[0].startswith("The teacher named the right code for 2 of 4") and "no better than" in lines[-1]
    better = distill.filter_findings({"every answer": {"answers": 10, "right code": 8, "label accuracy": 0.8},
                                      "kept by the filter": {"answers": 8, "right code": 8, "label accuracy": 1.0},
                                      "dropped by the filter": {"answers": 2, "right code": 0, "label accuracy": 0.0}})
    assert "2 of them wrong and 0 right" in better[1] and "right 100% of the time instead of 80%" in better[2]


def test_the_cookbook_comparison_says_whether_the_student_passed_its_teacher():
    row = lambda accuracy: {"code_accuracy": accuracy}  # noqa: E731
    behind = distill.cookbook_findings({"teacher": row(0.8), "student base": row(0.0), "student": row(0.76)})
    assert "Here the student keeps 95.0% of the teacher's and gains 76 points" in behind[0] and "not here" in behind[1]
    ahead = distill.cookbook_findings({"teacher": row(0.7), "student base": row(0.0), "student": row(0.75)})
    assert "here it did" in ahead[1]
    tied = distill.cookbook_findings({"teacher": row(0.625), "student base": row(0.0), "student": row(0.625)})
    assert "here the two tied (62%)" in tied[1]
    # 79.3% of 79.7%: the ratio of the figures shown (99.6%), not rounded up to a whole 100% beside them
    assert "keeps 99.6% of its teacher's accuracy and gains 15 points" in behind[0]


def test_04_sorts_wrong_answers_by_kind_and_says_what_they_mean():
    from helpers.course import evaluation

    table = {c.code: c.description for c in billing.load_codes()}
    answer = lambda code, description: f"{description} - CPT Code: {code}"  # noqa: E731
    results = pd.DataFrame({
        "expected_code": ["99214", "99214", "85025", "85025", "80061", "80061"],
        "answer": [answer("99214", table["99214"]), answer("99213", table["99214"]), answer("99213", table["99213"]),
                   "85025", answer("12345", "Made up"), answer("85025", table["99214"])]})
    results["code_ok"] = [True, False, False, False, False, False]
    kinds = evaluation.mistakes(results)
    assert kinds.to_dict() == {"not in the answer format": 1, "a code that does not exist": 1,
                               "the right description, a wrong number": 1, "another real code, whole": 1,
                               "one code's number, another's description": 1}
    lines = evaluation.mistake_findings(results)
    assert lines[0].startswith("Of the 3 codes in this sample, 0 were always right and 2 never")
    assert lines[1].startswith("Of 5 wrong answers: 1 not in the answer format;")
    # the confusion is named from the answers themselves: 85025 asked for, 99213 given whole
    assert "recognised the procedure" in lines[2] and f"(here: {table['85025']} answered as {table['99213']})" in lines[3]


def test_04_prompting_tokens_and_seed_sentences_follow_their_numbers():
    from helpers.course import evaluation

    def summary(accuracy: float, fmt: float, tokens: float) -> dict:
        return {"n": 16, "code_accuracy": accuracy, "code_accuracy_ci_low": accuracy / 2, "code_accuracy_ci_high": min(1, accuracy * 2),
                "format_compliance": fmt, "input_tokens": tokens}

    base = summary(0.0, 0.0, 60)
    offered = {"base + RAG, constrained": {"coverage": 0.8125, "choices": 5}, "base + long prompt, constrained": {"coverage": 1.0, "choices": 43}}

    def rung(long_free, rag_free, rag_forced, long_forced):
        return {"base + long prompt": summary(*long_free, 1200), "base + RAG": summary(*rag_free, 150),
                "base + RAG, constrained": {**summary(rag_forced[0], 1.0, 190), "code_accuracy_ci_low": rag_forced[1]},
                "base + long prompt, constrained": {**summary(long_forced[0], 1.0, 1240), "code_accuracy_ci_low": long_forced[1]}}

    # the run seen here (16 requests): free 0/16 both; constrained, 7/16 from five codes (chance 16%), 0/16 from 43
    seen = evaluation.prompting_findings(base, rung((0.0, 0.1), (0.0, 0.0), (0.4375, 0.23), (0.0, 0.0)), offered)
    assert "(1200 input tokens)" in seen[0] and "the form is why" in seen[1]
    assert "a pick at random: 16%" in seen[2] and "a pick at random: 2%" in seen[2] and "with 43 lines offered" in seen[2]
    assert seen[3].startswith("Five codes to choose from beat a pick at random (the 95% interval starts above it); the whole table did not")
    assert "cannot show is a large model following the prompt's form on its own" in seen[4]
    assert "Both beat" in evaluation.prompting_findings(base, rung((0, 0), (0, 0), (0.6, 0.4), (0.3, 0.1)), offered)[3]
    assert "Neither is shown to beat" in evaluation.prompting_findings(base, rung((0, 0), (0, 0), (0.1, 0.02), (0.0, 0.0)), offered)[3]
    assert "retrieval's misses" in evaluation.prompting_findings(base, rung((0, 0), (0, 0), (0.1, 0.02), (0.3, 0.1)), offered)[3]
    working = evaluation.prompting_findings(base, rung((0.5, 0.9), (0.0, 0.0), (0.6, 0.4), (0.3, 0.1)), offered)
    assert "real contender" in working[1]
    tokens = evaluation.token_findings(summary(0.8, 1.0, 61.8), 56.4)
    assert "61.8 input tokens" in tokens[0] and "10% more" in tokens[0] and "above" in tokens[0]
    unseen = {"fine-tuned": summary(0.0, 1, 60), "fine-tuned + RAG": summary(0.83, 1, 150)}
    assert "holds for the codes" in evaluation.seed_findings({**summary(0.9, 1, 60), "code_accuracy_ci_low": 0.82}, unseen)[0]
    assert "is only partly reached" in evaluation.seed_findings(summary(0.9, 1, 60), unseen)[0]  # interval reaches below 0.8
    assert "is not reached" in evaluation.seed_findings(summary(0.3, 1, 60), unseen)[0]
    assert "codes it never saw 0%, the same with retrieval 83%" in evaluation.seed_findings(summary(0.3, 1, 60), unseen)[0]
    # 04's comparison: retrieval's help on unseen codes, and whether it was only partial
    base, tuned = {**summary(0.0, 0.0, 60), "exact_match": 0.0, "exact_match_ci_low": 0.0, "exact_match_ci_high": 0.1}, \
        {**summary(0.8, 1.0, 60), "exact_match": 0.8, "exact_match_ci_low": 0.6, "exact_match_ci_high": 0.9}
    full = evaluation.comparison_findings(base, tuned, {**unseen, "base + RAG": summary(0.0, 0.0, 150)}, 6)
    assert any(line.startswith("Retrieval supplies") for line in full) and not any(line.startswith("Only part") for line in full)
    partial = evaluation.comparison_findings(base, tuned, {**unseen, "fine-tuned + RAG": summary(0.2, 1, 150), "base + RAG": summary(0.0, 0.0, 150)}, 6)
    assert any(line.startswith("Only part of it") and "RENUMBERED_SHARE" in line for line in partial)
    none = evaluation.comparison_findings(base, tuned, {**unseen, "fine-tuned + RAG": summary(0.0, 1, 150), "base + RAG": summary(0.0, 0.0, 150)}, 6)
    assert "Retrieval did not help the fine-tuned model on these requests." in none


def test_04_quotes_the_outlines_style_not_facts_and_says_what_the_numbers_show():
    """Takeaway #2 of the outline set against the run: trained codes learned (its letter fails), unseen codes not
    (its spirit holds), and the outline's own cataract example as the run answered it."""
    from helpers.course import evaluation

    share = lambda accuracy: {"code_accuracy": accuracy}  # noqa: E731
    answers = lambda *given: pd.DataFrame({"request": ["cataract op with intraocular lens", "phaco with IOL"],  # noqa: E731
                                           "expected_code": ["66984", "66984"], "answer": list(given),
                                           "code_ok": ["66984" in a for a in given]})
    cataract = "Cataract removal with lens implant - CPT Code: 66984"
    results = {"fine-tuned": answers("Colonoscopy - CPT Code: 45378", "x"), "fine-tuned + RAG": answers(cataract, cataract)}
    lines = evaluation.takeaway_findings(share(0.0), share(0.85), {"fine-tuned": share(0.0), "fine-tuned + RAG": share(0.8)}, results)
    assert '"fine-tuning teaches style, not facts"' in lines[0] and "Its letter does not hold" in lines[0] and "from 0% to 85%" in lines[0]
    assert "Its spirit does" in lines[0] and "takes it to 80%" in lines[0]
    assert ('asked "cataract op with intraocular lens", the fine-tuned model answered "Colonoscopy - CPT Code: 45378" (wrong)'
            in lines[1]) and f'"{cataract}" (right)' in lines[1]
    weak = evaluation.takeaway_findings(share(0.1), share(0.2), {"fine-tuned": share(0.3), "fine-tuned + RAG": share(0.5)},
                                        {k: v[v["expected_code"] != "66984"] for k, v in results.items()})
    assert "taught few facts of either kind" in weak[0] and "it is right 30% of the time" in weak[0] and len(weak) == 1


def test_constrained_choices_are_answer_lines_and_read_back_from_json():
    from helpers.course import billing, evaluation, retrieval

    request = [{"role": "system", "content": billing.SYSTEM_PROMPT}, {"role": "user", "content": "CBC with auto diff"}]
    offered = retrieval.candidate_answers(request, 5)
    assert len(offered) == 5 and all(billing.parse_answer(line) for line in offered)
    assert "Complete blood count with automated differential - CPT Code: 85025" in offered
    assert len(billing.all_answers()) == len(billing.load_codes()) and all(billing.parse_answer(a) for a in billing.all_answers())
    schema = evaluation.choice_format(offered)["json_schema"]
    assert schema["strict"] and schema["schema"]["properties"]["answer"]["enum"] == offered
    assert evaluation._answer_field('{"answer": "Lipid panel - CPT Code: 80061"}') == "Lipid panel - CPT Code: 80061"
    assert evaluation._answer_field('{"answer": "Lipid pa') == '{"answer": "Lipid pa'  # cut short: kept as it came
    examples = [{"messages": [*request, {"role": "assistant", "content": offered[0]}]},
                {"messages": [*request, {"role": "assistant", "content": "Lipid panel - CPT Code: 80061"}]}]
    assert evaluation.choice_coverage(examples, lambda m: offered) == 0.5
