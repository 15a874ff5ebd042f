"""Costs come from the dated table; the maths can be checked by hand."""
from __future__ import annotations

import pytest

from helpers.pricing import costs
from helpers.pricing.costs import Approach, auto_epochs, break_even_queries, prices, query_cost

# The figures issue #2 gives for 2026-11-24 (train / input / output per 1M tokens): the table must say the same.
ISSUE_FIGURES = {
    "gpt-4.1": (25.0, 3.00, 12.00),
    "gpt-4.1-mini": (5.0, 0.80, 3.20),
    "gpt-4.1-nano": (1.50, 0.20, 0.80),
    "gpt-4o-mini": (3.0, 0.30, 1.20),
}


@pytest.mark.parametrize("model", ISSUE_FIGURES)
def test_price_table_matches_todays_figures(model):
    p = prices(model, fine_tuned=True)
    assert (p.training, p.input, p.output) == ISSUE_FIGURES[model]


def test_table_is_dated_sourced_and_carries_the_wind_down_notice():
    table = costs.price_table()
    assert table["as_of"] == "2026-11-24"
    assert "2027-01-06" in table["notice"]
    assert prices("o4-mini", fine_tuned=True).training_per_hour == 100.0
    assert prices("gpt-5").input == 1.25
    frame = costs.prices_frame()
    assert frame["source"].str.len().min() > 0
    assert set(table["sources"]) >= {s.split(";")[0].split(" ")[0] for s in frame["source"]}


def test_ft_names_and_unknown_models():
    assert prices("ft:gpt-4.1-mini-2025-04-14:acme:billing:abc12345").training == 5.0
    with pytest.raises(ValueError, match="No base price for 'gpt-9'"):
        prices("gpt-9")


@pytest.mark.parametrize("n, epochs", [(1, 25), (3, 25), (10, 10), (30, 4), (34, 3), (100, 3), (8_333, 3), (8_334, 2), (12_501, 1), (30_000, 1)])
def test_auto_epochs(n, epochs):
    assert auto_epochs(n) == epochs


def test_auto_epochs_keeps_examples_times_epochs_in_range_where_possible():
    for n in range(1, 40_000, 7):
        e = auto_epochs(n)
        assert 1 <= e <= 25
        if 4 <= n <= 25_000:  # where some whole number of epochs in 1..25 can reach the range
            assert 100 <= n * e <= 25_000, n


def test_training_and_query_costs_by_hand():
    # 300 examples x 100 tokens x 3 epochs = 90,000 tokens at $5/1M = $0.45
    assert costs.training_cost("gpt-4.1-mini", 300, 100) == pytest.approx(0.45)
    # fine-tuned gpt-4.1-mini: 1,000 in (400 cached) + 100 out = (600*0.80 + 400*0.20 + 100*3.20)/1M
    assert query_cost("ft:gpt-4.1-mini:x::y", 1000, 100, cached_input_tokens=400) == pytest.approx((480 + 80 + 320) / 1e6)
    with pytest.raises(ValueError, match="per hour"):
        costs.training_cost("o4-mini", 100, 100)


def test_break_even_is_where_monthly_costs_meet():
    prompting = Approach("prompting", "gpt-4.1", input_tokens=2_000, output_tokens=20)
    tuned = Approach("fine-tuned", "gpt-4.1-mini", input_tokens=100, output_tokens=20, fine_tuned=True, one_off_usd=120.0)
    volume = break_even_queries(prompting, tuned, months=12)
    assert volume is not None and volume > 0
    assert prompting.monthly_cost(volume) == pytest.approx(tuned.monthly_cost(volume))
    assert prompting.monthly_cost(volume * 2) > tuned.monthly_cost(volume * 2)
    cheaper_everywhere = Approach("nano", "gpt-4.1-nano", input_tokens=50, output_tokens=20)
    assert break_even_queries(cheaper_everywhere, prompting) is None
    table = costs.compare_approaches([prompting, tuned], [0, volume, 2 * volume])
    assert list(table.columns) == ["prompting", "fine-tuned"]
    assert costs.cheapest_approach([prompting, tuned], 2 * volume).name == "fine-tuned"


def test_wilson_interval_matches_known_values_and_stays_in_bounds():
    from helpers.course.evaluation import wilson_interval

    assert wilson_interval(8, 16) == pytest.approx((0.280, 0.720), abs=1e-3)
    low, high = wilson_interval(0, 16)
    assert low == 0.0 and high == pytest.approx(0.194, abs=1e-3)
    assert wilson_interval(16, 16)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)


def test_findings_follow_the_numbers_they_describe():
    """Sentences rendered from numbers change when the numbers do (so they cannot contradict them)."""
    import pandas as pd

    from helpers.course import finetune
    from helpers.course.distill import comparison_findings

    steps = pd.DataFrame({"step": [1, 2, 3, 4], "train_loss": [2.0, 1.0, 0.5, 0.2], "train_accuracy": [0.1, 0.5, 0.7, 0.9],
                          "valid_loss": [None, 1.1, None, 0.9], "valid_mean_token_accuracy": [None, 0.5, None, 0.6]})
    falling = pd.DataFrame({"step": [2, 4], "full_valid_loss": [1.0, 0.8], "full_valid_mean_token_accuracy": [0.5, 0.6]})
    rising = falling.assign(full_valid_loss=[0.8, 1.0])
    assert "fell every epoch" in finetune.curve_findings(steps, falling)[-1]
    assert "began to memorise; the checkpoint of epoch 1" in finetune.curve_findings(steps, rising)[-1]
    assert len(finetune.curve_findings(steps, pd.DataFrame({"step": [2, 4]}))) == 1  # no validation file: no trend to state

    def summary(accuracy: float, usd: float, tokens: float) -> dict:
        return {"n": 20, "code_accuracy": accuracy, "code_accuracy_ci_low": accuracy / 2, "code_accuracy_ci_high": accuracy,
                "usd_per_1000_queries": usd, "input_tokens": tokens}

    good = comparison_findings({"teacher": summary(0.8, 0.1, 300), "student base": summary(0.0, 0.01, 50),
                                "student": summary(0.76, 0.01, 50)})
    assert "keeps 95% of the teacher's accuracy at 10% of its price" in good[1] and good[2].startswith("Distillation worked")
    short = comparison_findings({"teacher": summary(0.8, 0.1, 300), "student base": summary(0.0, 0.01, 50),
                                 "student": summary(0.4, 0.01, 50)})
    assert "falls short" in short[2]
    ahead = comparison_findings({"teacher": summary(0.66, 0.1, 300), "student base": summary(0.0, 0.01, 50),
                                 "student": summary(0.72, 0.01, 50)})
    assert "keeps 109% of the teacher's accuracy" in ahead[1] and "more accurate than its teacher" in ahead[2]
    assert "read it as a tie" in ahead[2]  # 0.36-0.72 overlaps 0.33-0.66


def test_distillation_set_up_pays_the_teacher_to_label_the_pool():
    from helpers.course import scenarios

    sizes = scenarios.measure_prompt_sizes()
    approaches = {a.name: a for a in scenarios.course_approaches(sizes, retrains_per_year=12)}
    setup = scenarios.distillation_setup_cost(sizes, approaches["prompting"])
    assert sizes.pool_requests == 444
    assert setup["teacher labelling"] == pytest.approx(444 * approaches["prompting"].per_query_usd())
    assert setup["total"] == pytest.approx(setup["teacher labelling"] + setup["student training"])
    assert approaches["distilled"].monthly_fixed_usd == pytest.approx(setup["total"])  # retrained monthly


def test_price_per_correct_answer_uses_measured_accuracy_and_labels_assumptions():
    from helpers.course import scenarios

    approaches = scenarios.course_approaches(scenarios.measure_prompt_sizes())
    summary = lambda accuracy: {"code_accuracy": accuracy, "n": 111}  # noqa: E731
    metrics = {"04_inference_and_eval": {"tuned": summary(0.8), "prompting": {"base + long prompt": summary(0.0),
                                                                             "base + RAG": summary(0.0)}},
               "05_distillation": {"comparison": {"teacher": summary(0.9), "student": summary(0.1)}}}
    accuracy = scenarios.measured_accuracy(metrics, assumed=0.5)
    assert accuracy["fine-tuned"] == (0.8, "measured in 04 on 111 requests (local stand-in)")
    assert scenarios.measured_accuracy({}, assumed=0.5)["distilled"][1].startswith("assumed 50%")
    frame = scenarios.per_correct_answer(approaches, accuracy)
    assert frame.loc["fine-tuned", "usd_per_1000_correct"] == pytest.approx(frame.loc["fine-tuned", "usd_per_1000_queries"] / 0.8)
    assert frame["usd_per_1000_correct"].isna().tolist() == [True, True, False, False, False]  # never right: no price
    lines = scenarios.per_correct_findings(frame)
    assert lines[0].startswith("Cheapest per query: distilled")
    assert lines[1].startswith("Cheapest per correct answer: fine-tuned") and "changes the ranking" in lines[1]
    assert lines[2].startswith("prompting, RAG never named the right code")


def test_the_seeds_figures_get_verdicts_computed_from_the_table():
    from helpers.course import scenarios

    sizes = scenarios.measure_prompt_sizes()
    approaches = scenarios.course_approaches(sizes)
    rag = next(a for a in approaches if a.name == "RAG")
    table = scenarios.seed_figures(sizes, approaches, (0.79, "measured in 04 on 111 requests (local stand-in)"))
    assert table.loc["RAG per query", "verdict"].startswith(f"{0.01 / rag.per_query_usd():,.0f}x too high")
    assert "50% of today's input price" in table.loc["a distilled model's price", "verdict"]
    assert "fine-tuned 79%" in table.loc["fine-tuning's quality", "today's table / this data"]
    # each figure with the row of the outline it comes from (issue 28: the set-up ranges had been swapped)
    assert table.loc["distillation set-up (approaches table)", "the outline says"] == "$50-$500"
    assert table.loc["distillation set-up (cost table)", "the outline says"] == "$100-$1,000"
    assert table.loc["fine-tuning GPT-4.1 set-up", "the outline says"] == "$500-$5,000"
    assert table.loc["fine-tuning set-up", "the outline says"] == "$10-$1,000"
    assert table.loc["fine-tuning's quality", "where in the outline"] == "cost table, fine-tuning row: quality"
    tuning = costs.training_cost("gpt-4.1-mini", sizes.train_examples, sizes.train_tokens_per_example)
    assert table.loc["fine-tuning set-up", "verdict"].startswith(f"{10 / tuning:,.0f}x-{1000 / tuning:,.0f}x this data's cost")
    assert "at $5.00 per 1M training tokens" in table.loc["fine-tuning set-up", "today's table / this data"]
    assert scenarios._against_range(10, 100, 50) == "this data's cost is inside the range"
    assert scenarios._against_range(10, 100, 250) == "this data costs 2.5x the top of the range"
    assert len(table) == 10 and table["verdict"].str.len().min() > 20 and table["where in the outline"].str.len().min() > 10
