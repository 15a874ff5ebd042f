"""The fast tier: models a user brings (``workbook serve --model NAME=SOURCE``, ``--models FILE``, ``WORKBOOK_MODELS``):
every bad source is a clear error that names it and stops the server before it touches anything; a brought base is
listed, trained and answered under its name through the routes (fake engine, no model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_api import CHAT, FakeEngine, NoModels

from helpers.cli import EXIT_USAGE, main
from helpers.pricing.catalogue import LocalBase
from helpers.server.app import create_app
from helpers.server.bases import Bases, ModelSourceError, brought_bases


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(ModelSourceError, match=r"--model mine=.*nowhere: .*nowhere does not exist\. Give a folder"):
        brought_bases([f"mine={tmp_path / 'nowhere'}"])


def test_a_hub_id_while_offline_names_the_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match=r"Qwen/Qwen2.5-0.5B-Instruct is a hub id, and this machine may not download "
                                               r"\(HF_HUB_OFFLINE=1\).*unset HF_HUB_OFFLINE"):
        brought_bases(["qwen=Qwen/Qwen2.5-0.5B-Instruct"])


@pytest.mark.parametrize("specs, message", [
    (["mine=/a", "mine=/b"], r"--model mine=/b: two models under the name 'mine' \(the other: --model mine=/a\)"),
    (["gpt-4.1-mini=/a"], r"two models under the name 'gpt-4.1-mini' \(the other: the shipped model"),
    (["no-equals-sign"], r"'no-equals-sign' is not NAME=SOURCE"),
    (["ft:mine=/a"], r"the name 'ft:mine' must be .* \(no ':'"),
])
def test_names_are_checked_before_any_model_is_read(specs, message):
    with pytest.raises(ModelSourceError, match=message):
        brought_bases(specs)  # the sources do not exist: the names fail first


def test_a_models_file_error_names_its_file_and_line(tmp_path, monkeypatch):
    listing = tmp_path / "models.txt"
    listing.write_text("# my models\n\nok=/somewhere\nbroken line\n", encoding="utf-8")
    monkeypatch.setenv("WORKBOOK_MODELS", str(listing))
    with pytest.raises(ModelSourceError, match=rf"{listing}, line 4: 'broken line' is not NAME=SOURCE"):
        brought_bases()


def test_an_unknown_architecture_or_a_folder_without_weights_is_refused(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "nonesuch-lm"}), encoding="utf-8")
    with pytest.raises(ModelSourceError, match=r"has no weights \(\*\.safetensors"):
        brought_bases([f"odd={folder}"])
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match=r"the architecture in .*config.json is unknown to transformers"):
        brought_bases([f"odd={folder}"])
    (folder / "config.json").unlink()
    with pytest.raises(ModelSourceError, match=r"has no config.json"):
        brought_bases([f"odd={folder}"])


def test_serve_stops_with_the_message_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "server"
    assert main(["serve", "--data-dir", str(data), "--model", f"mine={tmp_path / 'missing'}"]) == EXIT_USAGE
    assert "workbook serve: cannot bring a model: --model mine=" in capsys.readouterr().err
    assert not data.exists()


@pytest.fixture()
def api_with_mine(tmp_path):
    mine = LocalBase("mine", "", "", 4096, 1024, "mine, brought from a folder", str(tmp_path))
    engine = FakeEngine()
    app = create_app(tmp_path / "data", start_worker=False, allowed_hosts=None, models=NoModels(), engine=engine,  # type: ignore[arg-type]
                     bases=Bases({"mine": mine}))
    with TestClient(app, headers={"Authorization": "Bearer key-a"}) as client:
        client.engine = engine  # type: ignore[attr-defined]
        client.app_state = app.state.workbook  # type: ignore[attr-defined]
        yield client


def test_a_brought_model_is_listed_trained_and_answered_under_its_name(api_with_mine):
    api = api_with_mine
    assert "mine" in [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert api.get("/v1/models/mine").json()["owned_by"] == "system"
    file_id = api.post("/v1/files", files={"file": ("t.jsonl", (json.dumps(CHAT) + "\n") * 10)}, data={"purpose": "fine-tune"}).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": "mine", "training_file": file_id}).json()
    assert job["model"] == "mine"
    assert api.app_state.store.get("job", job["id"], None)["_base"] == "mine"
    answer = api.post("/v1/chat/completions", json={"model": "mine", "messages": [{"role": "user", "content": "abc"}]})
    assert answer.status_code == 200, answer.text
    target = api.engine.asked[-1][0]
    assert (target.base.name, target.weights) == ("mine", None)
    unknown = api.post("/v1/fine_tuning/jobs", json={"model": "theirs", "training_file": file_id}).json()["error"]
    assert "Available: " in unknown["message"] and "mine" in unknown["message"] and "--model NAME=SOURCE" in unknown["message"]


def test_a_tuned_model_whose_base_is_not_served_now_says_how_to_bring_it_back(api_with_mine):
    from helpers.server.store import owner_of

    api = api_with_mine
    api.app_state.store.put("model", {"id": "ft:gone:local::abcd1234", "object": "model", "created": 0, "owned_by": "org-local",
                                      "_base": "gone", "_job": "ftjob-x"}, owner_of("key-a"))
    answer = api.post("/v1/chat/completions", json={"model": "ft:gone:local::abcd1234", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "model_not_available"
    assert "its base model 'gone' is not served by this server now: start it with --model gone=SOURCE" in error["message"]


def test_device_and_models_settings_are_read(monkeypatch, tmp_path):
    from helpers.server import localmodels
    from helpers.settings import settings

    monkeypatch.setenv("WORKBOOK_DEVICE", "tpu")
    with pytest.raises(ValueError, match="WORKBOOK_DEVICE must be one of auto, cpu, cuda, cuda:N, mps, got 'tpu'"):
        localmodels.default_device()
    monkeypatch.setenv("WORKBOOK_DEVICE", "cpu")
    assert localmodels.default_device() == "cpu"
    monkeypatch.setenv("WORKBOOK_MODELS", str(tmp_path / "m.txt"))
    assert settings().models == Path(tmp_path / "m.txt")


def test_the_auto_learning_rate_falls_with_the_models_width():
    from helpers.server.hyperparameters import auto_lr_multiplier, resolve_auto

    assert auto_lr_multiplier("supervised") == 2.0  # SmolLM2-135M (576 wide): the measured 4e-3
    assert auto_lr_multiplier("supervised", 2048) == 0.562  # SmolLM2-1.7B: 1.1e-3
    assert auto_lr_multiplier("dpo", 1152) == 0.025
    assert resolve_auto("supervised", {}, 100, 2048)["learning_rate_multiplier"] == 0.562
    assert resolve_auto("supervised", {"learning_rate_multiplier": 3}, 100, 2048)["learning_rate_multiplier"] == 3  # asked for


def test_at_most_max_resident_base_models_stay_loaded_and_a_busy_one_is_never_unloaded(monkeypatch):
    from helpers.server import shared

    class Loaded:
        def __init__(self, base) -> None:
            self.base, self.busy = base, False

        def idle(self) -> bool:
            return not self.busy

    monkeypatch.setattr(shared, "SharedModel", Loaded)
    bases = {name: LocalBase(name, "", "", 0, 0, name, f"/{name}") for name in "abc"}
    models = shared.SharedModels(max_resident=2)
    first = models.get(bases["a"])
    models.get(bases["b"])
    assert models.get(bases["a"]) is first  # loaded once, and now the most recently used
    models.get(bases["c"])  # b, the least recently used, makes room
    assert [m.base.name for m in models.loaded()] == ["a", "c"]
    models.loaded()[0].busy = models.loaded()[1].busy = True  # a job trains on each
    models.get(bases["b"])
    assert sorted(m.base.name for m in models.loaded()) == ["a", "b", "c"]  # over the bound rather than unload a busy one


def test_messages_a_models_template_refuses_are_a_400_naming_them(api_with_mine):
    from jinja2 import TemplateError

    def refuse(base, messages, functions=None):
        raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")

    api_with_mine.engine.prompt_tokens = refuse
    answer = api_with_mine.post("/v1/chat/completions", json={"model": "mine", "messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "invalid_messages")
    assert error["message"].startswith("The chat template of mine refuses these messages: Conversation roles must alternate")


def test_a_bare_json_call_format_reads_only_whole_calls_of_offered_functions():
    """A template whose calls are bare JSON with other keys (as Llama 3.1 writes ``{"name": ..., "parameters": ...}``,
    one call a turn): a call is read back only when it is the whole answer, of a function offered; its grammar compiles."""
    from helpers.server import structured
    from helpers.server.chat_template import CallFormat

    bare = CallFormat(opening="", separator=None, closing="", arguments_key="parameters", native=True)
    call = '{"name": "lookup_cpt_code", "parameters": {"query": "lipid panel"}}'
    assert bare.read(call, {"lookup_cpt_code"}) == ("", [("lookup_cpt_code", {"query": "lipid panel"})])
    assert bare.text([{"function": {"name": "lookup_cpt_code", "arguments": '{"query": "lipid panel"}'}}]) == call
    for other in ("Lipid panel - CPT Code: 80061", '{"name": "refund", "parameters": {}}', '{"answer": "80061"}', call + call,
                  '{"name": ["lookup_cpt_code"], "parameters": {}}'):  # a model may write any JSON: a name that is no text
        assert bare.read(other, {"lookup_cpt_code"}) is None
    lookup = {"name": "lookup_cpt_code", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}
    answering = structured.answering({"tools": [{"type": "function", "function": lookup}], "tool_choice": "required"}, bare)
    assert answering.grammar and answering.read_tool_calls and answering.calls == bare
    content, calls = structured.read_tool_calls(call, [lookup], bare)
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"query": "lipid panel"}
