"""Take a fine-tuned model home (``workbook export``): the adapter in peft's format, the base model's folder named.

A model the local server trains is the base model's weights (SmolLM2-135M-Instruct, a plain transformers folder)
plus a LoRA adapter in peft's format: ``adapter_config.json`` and ``adapter_model.safetensors``. transformers +
peft, vLLM (``--enable-lora``) and llama.cpp (after converting the adapter to GGUF) all load that pair.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers.pricing import catalogue
from helpers.server import localmodels
from helpers.server.records import ModelRecord, Models
from helpers.server.shared import ADAPTER_FILES
from helpers.server.store import Store, owner_of


def export_model(data_dir: Path, key: str, model: str, target: Path) -> Path:
    """Copy ``key``'s fine-tuned ``model`` out of the store in ``data_dir`` into ``target``: the adapter's two files, a
    ``take_home.json`` naming the base model's folder, and a README saying how to load them. Returns ``target``."""
    store, owner = Store(data_dir), owner_of(key)
    card = Models(store).get(model, owner)
    if card is None:
        raise LookupError(f"No fine-tuned model {model!r} on the local server (data in {store.data_dir}). "
                          "client.models.list() lists yours; a checkpoint's model is exported through its job's final model.")
    source = store.model_dir(owner, model)
    base = _base_of(card)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy(source / name, target / name)
    base_dir = localmodels.weights_dir(base)
    # The precision the server answers in here: bf16 on a machine with bf16 kernels. The same adapter on the base in
    # fp32 answered one of notebook 10's held-out requests differently from the server on such a machine (issue 28);
    # loaded in the server's dtype, transformers + peft compute what the server computes.
    dtype = str(localmodels.compute_dtype()).removeprefix("torch.")
    (target / "take_home.json").write_text(json.dumps({"model": model, "base": base.name, "base_source": base.source,
                                                       "base_folder": str(base_dir), "dtype": dtype}, indent=2) + "\n",
                                           encoding="utf-8")
    (target / "README.md").write_text(_readme(model, base.source, dtype), encoding="utf-8")
    return target


def _base_of(card: ModelRecord) -> catalogue.LocalBase:
    """The base a fine-tuned model was trained on: the shipped one by name, or a brought one where it was brought from."""
    name, location = card.base or "", card.base_location
    if location:
        if not Path(location).exists():
            raise LookupError(f"The base model {name} of {card.id} was brought from {location}, which is gone; put it back "
                              "there to export the model.")
        return catalogue.LocalBase(name, "", Path(location).name, 0, 0, f"{name} (brought from {location})", location)
    return catalogue.base_models()[name]


def _readme(model: str, base_source: str, dtype: str) -> str:
    return f"""# {model}

A LoRA adapter in peft's format, trained by the Fine-Tuning & Distillation Workbook's local server on {base_source}.
The server answered with it in {dtype}: load the base in that dtype to get the server's answers token for token.

- transformers + peft: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.{dtype}), "<this folder>")`
- vLLM: `vllm serve BASE --enable-lora --lora-modules billing=<this folder>`, then call model "billing"
- llama.cpp: convert with `convert_lora_to_gguf.py --base BASE <this folder>`, run with `--lora`

BASE is the base model's folder (`base_folder` in take_home.json) or its name on the Hugging Face Hub.
"""
