"""helpers.backend: one shared local server, started on demand and found again; clear errors."""
from __future__ import annotations

import os
import signal

import httpx
import pytest

from helpers import backend
from server_harness import free_port


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_SERVER_DIR", str(tmp_path / "server"))
    monkeypatch.setenv("WORKBOOK_PORT", str(free_port()))
    monkeypatch.delenv("WORKBOOK_BACKEND", raising=False)
    yield tmp_path
    server = backend.local_server(start=False) if backend._healthy(f"http://127.0.0.1:{os.environ['WORKBOOK_PORT']}") else None
    if server is not None:
        os.kill(httpx.get(f"{server.url}/health").json()["pid"], signal.SIGTERM)


def test_client_starts_the_server_once_and_finds_it_again(isolated):
    first = backend.client()
    assert first.models.retrieve("gpt-4.1-mini").id == "gpt-4.1-mini"
    server = backend.local_server(start=False)
    pid = httpx.get(f"{server.url}/health").json()["pid"]
    again = backend.client()  # as a restarted kernel would
    assert again.base_url == first.base_url
    assert httpx.get(f"{server.url}/health").json()["pid"] == pid
    assert server.log_file.exists()


def test_openai_backend_needs_a_key_in_the_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(backend.BackendUnavailable, match="OPENAI_API_KEY"):
        backend.client("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-real")
    assert str(backend.client("openai").base_url).startswith("https://api.openai.com")


def test_unknown_backend_and_no_server_are_clear_errors(isolated):
    with pytest.raises(backend.BackendUnavailable, match="Unknown backend 'azure'"):
        backend.client("azure")
    with pytest.raises(backend.BackendUnavailable, match="workbook serve"):
        backend.local_server(start=False)
