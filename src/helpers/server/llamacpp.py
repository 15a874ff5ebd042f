"""llama.cpp's own tools, as the set-up installs them: its GGUF converters (``convert_hf_to_gguf.py`` and
``convert_lora_to_gguf.py``, with the ``gguf-py`` they are written against, from the llama-cpp-python source the wheel
was built from, kept in ``.venv/llama.cpp``) and its quantizer (the ``llama_cpp`` library's C API). Nothing here
writes GGUF itself: an export is what llama.cpp's maintainers' converters make of it.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

#: Where ``scripts/install_llama_cpp.py`` (``make setup``) unpacks the llama-cpp-python source it builds the wheel from.
SOURCE_ROOT = Path(sys.prefix) / "llama.cpp"
#: What the converters write directly; q4_k_m is quantized from f16 by llama.cpp's quantizer.
CONVERTER_TYPES = ("f32", "f16", "q8_0")
QUANTIZED_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
CONVERT_TIMEOUT_S = 1800


class LlamaCppMissing(RuntimeError):
    """llama.cpp (the llama-cpp-python package, or the converters kept beside it) is not installed."""


def vendor_dir() -> Path:
    """The llama.cpp source folder holding the converters (``.venv/llama.cpp/<sdist>/vendor/llama.cpp``)."""
    found = sorted(SOURCE_ROOT.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        raise LlamaCppMissing(f"llama.cpp's GGUF converters are not in {SOURCE_ROOT}: run `make setup`, which builds "
                              "llama-cpp-python from its source (about 10 minutes the first time) and keeps the converters. "
                              "The peft and merged formats need neither.")
    return found[-1].parent


def describe() -> str:
    """One line: which llama.cpp the GGUF export uses, or why there is none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("llama_cpp_python")
    except PackageNotFoundError:
        return "llama.cpp is not installed (GGUF export needs it; `make setup` builds it): peft and merged exports work"
    try:
        return f"llama.cpp {installed} (llama-cpp-python), converters in {vendor_dir()}"
    except LlamaCppMissing as exc:
        return str(exc)


def _run(command: list[str], what: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, env=env)
    if done.returncode != 0:
        last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-3:]
        raise RuntimeError(f"llama.cpp's {what} failed (exit {done.returncode}): " + " | ".join(last))


def convert_model(folder: Path, out: Path, outtype: str = "f16") -> Path:
    """A Hugging Face model folder as one GGUF file (weights, tokenizer, chat template, end-of-turn token), written by
    llama.cpp's ``convert_hf_to_gguf.py``."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"the converter writes {', '.join(CONVERTER_TYPES)}, not {outtype!r}")
    _run([sys.executable, str(vendor_dir() / "convert_hf_to_gguf.py"), str(folder), "--outfile", str(out),
          "--outtype", outtype], "convert_hf_to_gguf.py")
    return out


def convert_adapter(base_folder: Path, adapter_folder: Path, out: Path, outtype: str = "f16") -> Path:
    """A peft LoRA adapter as a GGUF adapter (``llama --lora``, Ollama's ``ADAPTER``), by ``convert_lora_to_gguf.py``;
    ``base_folder`` gives the base model's config (its weights are not read)."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"the converter writes {', '.join(CONVERTER_TYPES)}, not {outtype!r}")
    _run([sys.executable, str(vendor_dir() / "convert_lora_to_gguf.py"), "--base", str(base_folder), "--outfile", str(out),
          "--outtype", outtype, str(adapter_folder)], "convert_lora_to_gguf.py")
    return out


def quantize(source: Path, out: Path, kind: str = "q4_k_m", threads: int = 2) -> Path:
    """``source`` (an f16/f32 GGUF) quantized by llama.cpp's own quantizer (``llama_model_quantize``, what the
    ``llama-quantize`` tool calls)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise LlamaCppMissing(f"llama-cpp-python is not installed ({exc}): run `make setup`.") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_TYPES[kind])
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source.name} to {kind} (llama_model_quantize returned {code}).")
    return out
