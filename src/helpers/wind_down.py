"""After OpenAI's wind-down (notebook 10): what a refused account sees, and how to take a model fine-tuned on the local
server home, in the formats open-source tools load.

A model the local server trains is the base model's weights (SmolLM2-135M-Instruct, a plain transformers folder)
plus a LoRA adapter in peft's format: ``adapter_config.json`` and ``adapter_model.safetensors``. transformers +
peft, vLLM (``--enable-lora``) and llama.cpp (after converting the adapter to GGUF) all load that pair.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import finetune
from helpers.costs import price_table

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def notice() -> tuple[str, str]:
    """The wind-down notice of the dated price table, and its date."""
    table = price_table()
    return table["notice"], table["as_of"]


def rehearsal_client(port: int | None = None):
    """A client of a second local server that refuses new fine-tuning jobs as OpenAI refuses them after the wind-down
    (403 ``training_not_available``); it answers everything else. It runs beside the course's server, on the next port."""
    from openai import OpenAI

    from helpers.backend import default_data_dir, local_key, local_port, local_server

    server = local_server(port or local_port() + 1, default_data_dir().parent / "closed", training_closed=True)
    return OpenAI(base_url=server.api_url, api_key=local_key())


def stop_rehearsal(port: int | None = None) -> None:
    """Stop the server :func:`rehearsal_client` started."""
    from helpers.backend import local_port, stop_local_server

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
    """Copy a fine-tuned model of the local server out of its store into ``target``: the adapter's two files, a
    ``take_home.json`` naming the base model's folder, and a README saying how to load them. Returns ``target``."""
    from helpers.backend import default_data_dir, local_key
    from helpers.server import localmodels
    from helpers.server.store import Store, owner_of

    store, owner = Store(default_data_dir()), owner_of(local_key())
    card = store.get("model", model, owner)
    if card is None:
        raise LookupError(f"No fine-tuned model {model!r} on the local server (data in {store.data_dir}). "
                          "client.models.list() lists yours; a checkpoint's model is exported through its job's final model.")
    source = store.model_dir(owner, model)
    base = localmodels.base_models()[card["_base"]]
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy(source / name, target / name)
    base_dir = localmodels.weights_dir(base)
    (target / "take_home.json").write_text(json.dumps({"model": model, "base": base.name, "base_source": base.source,
                                                       "base_folder": str(base_dir)}, indent=2) + "\n", encoding="utf-8")
    (target / "README.md").write_text(_readme(model, base.source), encoding="utf-8")
    return target


def _readme(model: str, base_source: str) -> str:
    return f"""# {model}

A LoRA adapter in peft's format, trained by the Fine-Tuning & Distillation Workbook's local server on {base_source}.

- transformers + peft: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "<this folder>")`
- vLLM: `vllm serve BASE --enable-lora --lora-modules billing=<this folder>`, then call model "billing"
- llama.cpp: convert with `convert_lora_to_gguf.py --base BASE <this folder>`, run with `--lora`

BASE is the base model's folder (`base_folder` in take_home.json) or its name on the Hugging Face Hub.
"""


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
