"""The fast tier: a notebook whose ``MODEL`` names an open model (the local base model, or one brought in the file
``WORKBOOK_MODELS`` names) validates, counts and budgets its files as for OpenAI's models, and shows no price where
OpenAI has none, instead of inventing one; a name nobody serves is an error that says where names come from."""
from __future__ import annotations

import pandas as pd
import pytest

from helpers.course import evaluation, fitting
from helpers.course.finetune import OverBudget, budget_guard
from helpers.data.validate import validate_file
from helpers.paths import DATA_DIR
from helpers.pricing.catalogue import ModelSourceError, model_info
from helpers.pricing.costs import NoOpenAIPrice, has_openai_price, prices

TRAIN = DATA_DIR / "billing" / "train.jsonl"


@pytest.fixture
def brought(tmp_path, monkeypatch):
    listing = tmp_path / "models.txt"
    listing.write_text("# the team's models\nmy-model=/models/Qwen2.5-0.5B-Instruct\n\nteam/llama=/models/llama.gguf\n")
    monkeypatch.setenv("WORKBOOK_MODELS", str(listing))
    return listing


def test_a_brought_model_is_an_open_model_under_its_own_and_its_fine_tuned_names(brought):
    for name in ("my-model", "ft:my-model:local:billing:ftjob-abc", "team/llama"):
        info = model_info(name)
        assert info.open and info.fine_tunable and info.methods == ("supervised", "dpo", "reinforcement") and info.encoding == "o200k_base"
        assert not has_openai_price(name)
    assert model_info("smollm2-135m-instruct").open  # the shipped model under its own name is one too
    assert not model_info("gpt-4.1-mini").open and has_openai_price("gpt-4.1-mini")  # OpenAI's names stay OpenAI's


def test_its_file_is_counted_as_for_openai_and_the_cost_says_there_is_no_price(brought):
    mine, openai = validate_file(TRAIN, model="my-model"), validate_file(TRAIN, model="gpt-4.1-mini")
    assert mine.ok and (mine.n_examples, mine.total_tokens) == (openai.n_examples, openai.total_tokens)
    assert mine.stats["billing_tokens_per_epoch"] == openai.stats["billing_tokens_per_epoch"]
    assert mine.cost["cost_usd"] is None and openai.cost["cost_usd"] > 0
    assert "my-model is an open model run on your own machine: OpenAI has no price for it" in mine.summary()
    with pytest.raises(NoOpenAIPrice, match="my-model is an open model"):
        prices("ft:my-model:local::x")


def test_the_budget_guard_passes_an_open_model_locally_and_refuses_it_on_openai():
    assert budget_guard("local", None, 1.0) == "Local backend: this job costs $0 (an open model, which OpenAI does not sell)."
    assert budget_guard("local", 0.25, 1.0) == "Local backend: this job costs $0 (on OpenAI it would be about $0.25)."
    with pytest.raises(OverBudget, match="There is no OpenAI price for this model, so MAX_SPEND_USD cannot be checked"):
        budget_guard("openai", None, 1.0)


def test_tables_show_epochs_and_tokens_and_no_price_for_an_open_model(brought):
    runs = fitting.runs(6, [2.0])
    mine, openai = fitting.price_table(TRAIN, runs, "my-model"), fitting.price_table(TRAIN, runs, "gpt-4.1-mini")
    assert mine["USD on OpenAI"].isna().all() and (openai["USD on OpenAI"] > 0).all()
    pd.testing.assert_frame_equal(mine.drop(columns="USD on OpenAI"), openai.drop(columns="USD on OpenAI"))
    results = pd.DataFrame({"prompt_tokens": [40, 44], "completion_tokens": [9, 11], "code_ok": [True, False],
                            "exact": [True, False], "format_ok": [True, True], "latency_s": [0.2, 0.3]})
    assert evaluation.summarize(results, priced_as="my-model", fine_tuned=True)["usd_per_1000_queries"] is None
    assert evaluation.summarize(results, priced_as="gpt-4.1-mini", fine_tuned=True)["usd_per_1000_queries"] > 0


def test_a_name_nobody_serves_says_where_names_come_from(brought, monkeypatch):
    with pytest.raises(ValueError, match=rf"Unknown model 'my-modle'\. Known models: .*my-model.*brought in {brought}, the file "
                                         "WORKBOOK_MODELS names"):
        validate_file(TRAIN, model="my-modle")
    monkeypatch.delenv("WORKBOOK_MODELS")
    with pytest.raises(ValueError, match="Unknown model 'my-model'.*a file that WORKBOOK_MODELS names: one NAME=SOURCE line"):
        model_info("my-model")


def test_a_broken_models_file_is_named_with_its_line(brought):
    brought.write_text("my-model=/models/a\nno equals sign\n")
    with pytest.raises(ModelSourceError, match=rf"{brought}, line 2: 'no equals sign' is not NAME=SOURCE"):
        model_info("my-model")



def test_the_setup_line_names_the_models_that_answer_as_themselves(brought, monkeypatch):
    from helpers.course.session import _brought_models

    assert _brought_models() == ", and my-model, team/llama answer as themselves"
    brought.write_text("my-model=/models/Qwen2.5-0.5B-Instruct\n")
    assert _brought_models() == ", and my-model answers as itself"
    monkeypatch.delenv("WORKBOOK_MODELS")
    assert _brought_models() == ""
