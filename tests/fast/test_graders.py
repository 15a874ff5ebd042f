"""Graders (``helpers.server.graders``) through ``client.fine_tuning.alpha.graders``: the official client with strict
response validation against the app (FastAPI's TestClient as its HTTP client; no model is needed). The python grader
really runs, sandboxed: no network, the server's data folder hidden, limits on time and memory."""
from __future__ import annotations

import openai
import pytest
from fastapi.testclient import TestClient
from test_api import FakeEngine, NoModels

from helpers.server import graders
from helpers.server.app import create_app

CODE = {"type": "string_check", "name": "code", "input": "{{ sample.output_text }}", "reference": "{{ item.code }}", "operation": "like"}
FORM = {"type": "python", "name": "form", "source": (
    "import re\n"
    "def grade(sample, item):\n"
    "    return 1.0 if re.fullmatch(r'.+ - CPT Code: \\d{5}', sample['output_text']) else 0.0\n")}
ANSWER = "Lipid panel - CPT Code: 80061"


@pytest.fixture()
def client(tmp_path):
    (tmp_path / "secret.txt").write_text("the server's own file")
    app = create_app(tmp_path, start_worker=False, allowed_hosts=None, models=NoModels(), engine=FakeEngine())  # type: ignore[arg-type]
    with TestClient(app) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="key-a", http_client=http, max_retries=0,
                            _strict_response_validation=True)


def run(client, grader, sample=ANSWER, item=None):
    return client.fine_tuning.alpha.graders.run(grader=grader, model_sample=sample, item=item or {"code": "80061"})


def test_string_check_and_text_similarity_score_as_their_operations_say(client):
    assert run(client, CODE).reward == 1.0
    assert run(client, {**CODE, "operation": "eq"}).reward == 0.0  # the answer is more than the code
    assert run(client, {**CODE, "operation": "ilike", "reference": "LIPID"}).reward == 1.0
    assert run(client, {**CODE, "operation": "like", "reference": "LIPID"}).reward == 0.0
    exact = {"type": "text_similarity", "name": "same", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}
    for metric in ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_l"):
        same = run(client, {**exact, "evaluation_metric": metric}, item={"answer": ANSWER}).reward
        other = run(client, {**exact, "evaluation_metric": metric}, item={"answer": "Chest X-ray - CPT Code: 71046"}).reward
        assert same == pytest.approx(1.0) and 0 <= other < 0.8, (metric, other)


def test_a_python_grader_runs_sandboxed_and_multi_combines_by_its_formula(client, tmp_path):
    answered = run(client, FORM)
    assert answered.reward == 1.0 and not answered.metadata.errors.python_grader_runtime_error
    assert run(client, FORM, sample="80061").reward == 0.0
    both = {"type": "multi", "name": "billing", "graders": {"code": CODE, "form": FORM}, "calculate_output": "0.75 * code + 0.25 * form"}
    scored = run(client, both, sample="CPT Code: 80061")
    assert scored.reward == pytest.approx(0.75) and scored.sub_rewards == {"code": 1.0, "form": 0.0}
    peek = {"type": "python", "name": "peek", "source": (
        "import os, socket\n"
        "def grade(sample, item):\n"
        f"    files = os.listdir({str(tmp_path)!r})\n"
        "    try:\n"
        "        socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
        "        reached = 1\n"
        "    except OSError:\n"
        "        reached = 0\n"
        "    return float(len(files) + 10 * reached + 100 * ('WORKBOOK_API_KEY' in os.environ))\n")}
    assert run(client, peek).reward == 0.0  # no file of the server's, no network, no key in its environment


@pytest.mark.parametrize("source, says", [
    ("def grade(sample, item):\n    return 'yes'\n", "not a finite number"),
    ("def grade(sample, item):\n    raise KeyError('code')\n", "KeyError"),
    ("def grade(sample, item):\n    while True:\n        pass\n", "more than its 2 CPU seconds"),
    ("def grade(sample, item):\n    return len(bytearray(8 << 30))\n", "MemoryError"),
])
def test_a_python_grader_that_fails_scores_0_and_says_why(client, source, says, monkeypatch):
    monkeypatch.setitem(graders.PYTHON_LIMITS, "cpu_s", 2)
    result = run(client, {"type": "python", "name": "bad", "source": source})
    assert result.reward == 0.0 and result.metadata.errors.python_grader_runtime_error
    assert says in result.metadata.errors.python_grader_runtime_error_details


@pytest.mark.parametrize("grader, param, says", [
    ({"type": "nope", "name": "x"}, "grader.type", "must be one of"),
    ({"type": ["string_check"], "name": "x"}, "grader.type", "must be one of"),
    ({**CODE, "operation": "contains"}, "grader.operation", "'eq', 'ne', 'like' or 'ilike'"),
    ({k: v for k, v in CODE.items() if k != "reference"}, "grader.reference", "Field required"),
    ({**CODE, "reference": "{{ answer }}"}, "grader.reference", "may name only sample"),
    ({**CODE, "input": "{{ sample.output_text "}, "grader.input", "not a valid template"),
    ({"type": "python", "name": "p", "source": "def grade(sample, item)\n    return 1\n"}, "grader.source", "does not compile"),
    ({"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "cosine"},
     "grader.evaluation_metric", "embedding model"),
    ({"type": "multi", "name": "m", "graders": {"code": CODE}, "calculate_output": "code + form"}, "grader.calculate_output", "'form'"),
    ({"type": "multi", "name": "m", "graders": {"code": CODE}, "calculate_output": "__import__('os')"}, "grader.calculate_output", "calls"),
    ({"type": "multi", "name": "m", "graders": {"code": {**CODE, "operation": "?"}}, "calculate_output": "code"},
     "grader.graders.code.operation", "'eq'"),
    ({"type": "score_model", "name": "s", "input": [], "model": "gpt-4.1-mini"}, "grader.input", "at least one message"),
    ({"type": "score_model", "name": "s", "input": [{"role": "user", "content": "{{ answer }}"}], "model": "gpt-4.1-mini"},
     "grader.input.0.content", "may name only sample"),
    ({"type": "score_model", "name": "s", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
      "model": "gpt-4.1-mini"}, "grader.input.0.content.0", "text only"),
    ({"type": "score_model", "name": "s", "input": [{"role": "user", "content": "x"}], "model": "gpt-4.1-mini", "range": [1, 0]},
     "grader.range", "the lower first"),
    ({"type": "score_model", "name": "s", "input": [{"role": "user", "content": "x"}], "model": "gpt-4.1-mini",
      "sampling_params": {"temperature": -1}}, "grader.sampling_params.temperature", "from 0 to 2"),
    ({"type": "score_model", "name": "s", "input": [{"role": "user", "content": "x"}], "model": "gpt-4.1-mini",
      "sampling_params": {"max_completions_tokens": 100000}}, "grader.sampling_params.max_completions_tokens", "from 1 to 256"),
    ({"type": "label_model", "name": "l", "input": [{"role": "user", "content": "x"}], "model": "gpt-4.1-mini",
      "labels": ["yes", "no"], "passing_labels": ["maybe"]}, "grader.passing_labels", "'maybe' is not one"),
])
def test_a_grader_the_server_cannot_run_is_a_400_naming_its_field(client, grader, param, says):
    for call in (lambda: client.fine_tuning.alpha.graders.validate(grader=grader), lambda: run(client, grader)):
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        assert raised.value.param == param and says in raised.value.message, raised.value.message


def test_a_template_naming_a_field_the_item_lacks_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as raised:
        run(client, CODE, item={"cpt": "80061"})
    assert raised.value.param == "grader.reference" and "code" in raised.value.message and "cpt" in raised.value.message


def test_validate_returns_the_grader_it_checked(client):
    """OpenAI's guide writes a multi grader's ``graders`` as an object of graders by name; its API specification (and so
    the ``openai`` package's types) as one grader. Both are taken; the answer gives the grader as it was written, so the
    named form is read here without the package's strict types."""
    checked = client.fine_tuning.alpha.graders.validate(grader=CODE)
    assert checked.grader is not None and checked.grader.type == "string_check" and checked.grader.reference == CODE["reference"]
    one = client.fine_tuning.alpha.graders.validate(grader={"type": "multi", "name": "m", "graders": CODE, "calculate_output": "code"})
    assert one.grader is not None and one.grader.type == "multi"
    both = {"type": "multi", "name": "billing", "graders": {"code": CODE, "form": FORM}, "calculate_output": "min(code, form)"}
    raw = client.fine_tuning.alpha.graders.with_raw_response.validate(grader=both).http_response.json()
    assert raw["grader"] == both


def judged(kind: str, **more) -> dict:
    """A model grader whose model reads the answer alone: this app's fake engine answers with it reversed."""
    return {"type": kind, "name": "judge", "model": "gpt-4.1-mini", **more,
            "input": [{"role": "system", "content": "Grade the billing answer."}, {"role": "user", "content": "{{ sample.output_text }}"}]}


def test_a_model_grader_asks_its_model_and_reads_a_score_or_a_label(client):
    assert run(client, judged("score_model"), sample="8.0").reward == pytest.approx(0.8)  # the model answered "0.8"
    assert run(client, judged("score_model", range=[0, 10]), sample="7 :erocS").reward == pytest.approx(7.0)
    first = run(client, judged("score_model"), sample="3.0 ro 7.0 :llet t'nac")  # "can't tell: 0.7 or 0.3": the first number
    assert first.reward == pytest.approx(0.7)
    outside = run(client, judged("score_model"), sample="9")
    assert outside.reward == 0.0 and outside.metadata.errors.api_model_grader_parse_error
    labels = {"labels": ["right", "wrong"], "passing_labels": ["right"]}
    assert run(client, judged("label_model", **labels), sample=".THGIR").reward == 1.0  # case and punctuation aside
    assert run(client, judged("label_model", **labels), sample="gnorw").reward == 0.0
    odd = run(client, judged("label_model", **labels), sample="ebyam")
    assert odd.reward == 0.0 and odd.metadata.errors.api_model_grader_parse_error
    both = {"type": "multi", "name": "m", "graders": {"code": CODE, "judge": judged("score_model")}, "calculate_output": "code * judge"}
    long = run(client, judged("score_model"), sample="word " * 20000)  # more than the model reads: the sample fails, says why
    assert long.reward == 0.0 and long.metadata.errors.api_model_grader_server_error
    assert "more than gpt-4.1-mini reads" in long.metadata.errors.api_model_grader_server_error_details
    scored = run(client, both, sample="80061 :edoC TPC - 5.0")  # holds the code; its model answers "0.5 - CPT Code: 16008"
    assert scored.sub_rewards == {"code": 1.0, "judge": pytest.approx(0.5)} and scored.reward == pytest.approx(0.5)


def test_a_model_grader_names_a_model_the_caller_has(client):
    with pytest.raises(openai.BadRequestError) as raised:
        run(client, {"type": "multi", "name": "m", "calculate_output": "judge",
                     "graders": {"judge": {**judged("score_model"), "model": "ft:gpt-4.1-mini:local:nobody:x"}}})
    assert raised.value.param == "grader.graders.judge.model" and "does not exist" in raised.value.message
