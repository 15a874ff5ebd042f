"""The engine seam without a model: ``workbook serve --engine vllm`` refuses what it cannot do in one line, and a model
the engine does not run gets a 404 that says how to serve it."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from test_api import FakeEngine, NoModels

from helpers.cli import EXIT_INVALID, EXIT_USAGE, main
from helpers.pricing.catalogue import default_local_base
from helpers.server.app import create_app


@pytest.mark.parametrize("args, code, message", [
    (["--vllm-url", "http://127.0.0.1:9"], EXIT_USAGE, "--vllm-url and --vllm-base go with --engine vllm"),
    (["--engine", "vllm", "--vllm-base", "no-such-model"], EXIT_USAGE, "--vllm-base 'no-such-model' is not a model this server knows"),
    (["--engine", "vllm", "--vllm-url", "http://127.0.0.1:9"], EXIT_INVALID, "cannot use vLLM: no vLLM answers at http://127.0.0.1:9"),
])
def test_serve_refuses_an_engine_it_cannot_use_in_one_line(tmp_path, capsys, args, code, message):
    assert main(["serve", "--data-dir", str(tmp_path / "server"), *args]) == code
    error = capsys.readouterr().err
    assert error.startswith("workbook serve: ") and message in error and "Traceback" not in error


def test_serve_with_vllm_says_to_make_its_environment_when_it_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBOOK_VLLM_ENV", str(tmp_path / "no-vllm"))
    assert main(["serve", "--data-dir", str(tmp_path / "server"), "--engine", "vllm"]) == EXIT_INVALID
    error = capsys.readouterr().err
    assert "vLLM's environment is not made" in error and "run `make vllm` once" in error


class OneBaseEngine(FakeEngine):
    """An engine that runs one base model, as vLLM does."""

    def unavailable(self, base) -> str | None:
        return None if base.name == default_local_base().name else f"its base model, {base.name}, is not the one this engine runs."


def test_a_model_the_engine_does_not_run_is_a_404_saying_why(tmp_path):
    from helpers.pricing.catalogue import LocalBase
    from helpers.server.bases import Bases

    mine = LocalBase("mine", "", "", 4096, 1024, "mine, brought from a folder", str(tmp_path))
    app = create_app(tmp_path / "data", start_worker=False, allowed_hosts=None, models=NoModels(), engine=OneBaseEngine(),  # type: ignore[arg-type]
                     bases=Bases({"mine": mine}))
    with TestClient(app, headers={"Authorization": "Bearer key-a"}) as api:
        answer = api.post("/v1/chat/completions", json={"model": "mine", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "model_not_available" and "is not the one this engine runs" in answer.json()["error"]["message"]
        assert api.post("/v1/chat/completions", json={"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
