"""After OpenAI's wind-down (notebook 10): what a refused account sees, and how to take a model fine-tuned on the local
server home, in the formats open-source tools load.

A model the local server trains is the base model's weights (SmolLM2-135M-Instruct, a plain transformers folder)
plus a LoRA adapter in peft's format: ``adapter_config.json`` and ``adapter_model.safetensors``. transformers +
peft, vLLM (``--enable-lora``) and llama.cpp (after converting the adapter to GGUF) all load that pair.
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers.course import finetune
from helpers.pricing.costs import price_table


def notice() -> tuple[str, str]:
    """The wind-down notice of the dated price table, and its date."""
    table = price_table()
    return table["notice"], table["as_of"]


def rehearsal_client(port: int | None = None):
    """A client of a second local server that refuses new fine-tuning jobs as OpenAI refuses them after the wind-down
    (403 ``training_not_available``); it answers everything else. It runs beside the course's server, on the next port."""
    from openai import OpenAI

    from helpers.course.backend import default_data_dir, local_key, local_port, local_server

    server = local_server(port or local_port() + 1, default_data_dir().parent / "closed", training_closed=True)
    return OpenAI(base_url=server.api_url, api_key=local_key())


def stop_rehearsal(port: int | None = None) -> None:
    """Stop the server :func:`rehearsal_client` started."""
    from helpers.course.backend import local_port, stop_local_server

    stop_local_server(port or local_port() + 1)


def try_to_train(client, path: Path, model: str) -> str:
    """Upload ``path`` and ask for a job; return what the course's helper says when the server refuses."""
    try:
        job = finetune.start_job(client, training_file=finetune.upload(client, path).id, model=model)
    except finetune.TrainingNotAvailable as exc:
        return str(exc)
    client.fine_tuning.jobs.cancel(job.id)
    raise RuntimeError(f"The server started job {job.id} (now cancelled): it does not refuse training.")


def export_model(model: str, target: Path) -> Path:
    """Copy a fine-tuned model of the local server out of its store into ``target`` (with ``workbook export``, the
    server's own tool for it): the adapter's two files, a ``take_home.json`` naming the base model's folder, and a
    README saying how to load them. Returns ``target``."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "helpers.cli", "export", model, str(target)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise LookupError(done.stderr.strip().removeprefix("workbook export: "))
    return Path(target)


def load(folder: Path):
    """The exported model as transformers + peft load it: ``(model, tokenizer)``."""
    import warnings

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    base_folder = json.loads((Path(folder) / "take_home.json").read_text(encoding="utf-8"))["base_folder"]
    transformers_logging.disable_progress_bar()  # a loading bar per call is noise in a notebook
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers property deprecated for v6
        tokenizer = AutoTokenizer.from_pretrained(base_folder)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32), str(folder))
    return model.eval(), tokenizer


def answer(model, tokenizer, messages: list[dict], max_new_tokens: int = 32) -> str:
    """A greedy answer to ``messages`` (the chat template the server uses)."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
