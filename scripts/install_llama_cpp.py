"""Install llama.cpp for the workbook (``make setup`` runs this): llama-cpp-python built from its source, and
llama.cpp's GGUF converters from that same source kept in ``.venv/llama.cpp`` (the wheel does not carry them).

PyPI has only the source of llama-cpp-python; pip builds it with CMake (about 10 minutes on 2 cores) and caches the
wheel, so a second environment installs in seconds. Only the library is built (no multimodal library, tests,
examples or tools). If it cannot be built, this says why in one line and the set-up goes on: the peft and merged
exports do not need it; GGUF export, notebook 11 and their tests do, and say so.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from first_builds import record

REPO = Path(__file__).resolve().parents[1]
SOURCE_ROOT = Path(sys.prefix) / "llama.cpp"  # as helpers.server.llamacpp finds it
# Not for this CPU alone (GGML_NATIVE off): AVX2, FMA, F16C and BMI2, which every x86-64 machine of this kind has (AMD
# Zen 2 and later, Intel Xeons). A native build on a Xeon with AMX put AMX tile instructions in its matmul, and the
# kernel here refuses them ("trap invalid opcode ... tileloadd" in libggml-cpu.so: notebook 11's kernel died, 2026-12-05),
# and a wheel built natively on one machine must not crash on another that shares the pip cache.
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
              "-DLLAMA_BUILD_SERVER=OFF")


def pinned() -> str:
    lines = (REPO / "requirements" / "llama.txt").read_text(encoding="utf-8").splitlines()
    return next(line.strip() for line in lines if line.strip().startswith("llama-cpp-python=="))


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return None


def missing_dependencies() -> list[str]:
    """llama-cpp-python's own requirements (not its extras') that are not installed."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    missing = []
    for line in requires("llama_cpp_python") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            if requirement.specifier.contains(version(requirement.name), prereleases=True):
                continue
        except PackageNotFoundError:
            pass
        missing.append(str(requirement))
    return missing


def say(message: str) -> None:
    print(f"make setup: {message}", flush=True)


def main() -> int:
    requirement = pinned()
    wanted = requirement.split("==")[1]
    source = SOURCE_ROOT / f"llama_cpp_python-{wanted}"
    built_with = SOURCE_ROOT / f"llama_cpp_python-{wanted}.cmake-args"  # what the installed build was made with
    same_build = built_with.exists() and built_with.read_text() == CMAKE_ARGS
    if (installed_version() == wanted and same_build and not missing_dependencies()
            and (source / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").exists()):
        return 0
    pip = [sys.executable, "-m", "pip"]
    started = time.monotonic()
    try:
        if not source.exists():
            SOURCE_ROOT.mkdir(parents=True, exist_ok=True)
            subprocess.run([*pip, "download", "--quiet", "--no-deps", "--no-binary", ":all:", requirement, "-d", str(SOURCE_ROOT)],
                           check=True, capture_output=True, text=True, timeout=900)
            with tarfile.open(SOURCE_ROOT / f"llama_cpp_python-{wanted}.tar.gz") as archive:
                archive.extractall(SOURCE_ROOT, filter="data")
            (SOURCE_ROOT / f"llama_cpp_python-{wanted}.tar.gz").unlink()
        if installed_version() != wanted or not same_build:
            say(f"building llama.cpp ({requirement}) from source: about 5-10 minutes on 2 cores the first time ...")
            env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
            # --no-deps: a rebuild must not upgrade numpy or anything else the workbook pinned; its own dependencies
            # (diskcache, jinja2, ...) are installed next, pinned by what is installed already where they are
            subprocess.run([*pip, "install", "--quiet", "--force-reinstall", "--no-deps", str(source)], check=True,
                           capture_output=True, text=True, env=env, timeout=3600)
            built_with.write_text(CMAKE_ARGS)
            say(f"llama.cpp built and installed in {time.monotonic() - started:.0f} s")
            record(f"llama.cpp ({requirement}) built from source", time.monotonic() - started)
        missing = missing_dependencies()
        if missing:  # a first install with --no-deps left them out (CI's fresh clone: "No module named 'diskcache'")
            subprocess.run([*pip, "install", "--quiet", *missing], check=True, capture_output=True, text=True, timeout=900)
        subprocess.run([sys.executable, "-c", "import llama_cpp"], check=True, capture_output=True, text=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, tarfile.TarError) as exc:
        output = getattr(exc, "stderr", None) or getattr(exc, "stdout", None) or str(exc)
        reason = next((line.strip() for line in reversed(str(output).splitlines()) if "error" in line.lower()),
                      str(output).strip().splitlines()[-1] if str(output).strip() else type(exc).__name__)
        say(f"llama.cpp ({requirement}) could not be installed: {reason[:300]} -- GGUF export, notebook 11 and their "
            "tests need it; the rest of the workbook does not.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
