"""Take a fine-tuned model home (``workbook export``), in the format the runtime you take it to reads.

A model the local server trains is a base model's weights plus a LoRA adapter in peft's format. It leaves as:

- ``peft``: the adapter's two files (``adapter_config.json``, ``adapter_model.safetensors``); transformers + peft and
  vLLM (``--enable-lora``) load them on the base model;
- ``merged``: one Hugging Face folder, the adapter merged into the base (plain transformers loads it, no peft), with
  the base's tokenizer and chat template and a generation config whose ``eos_token_id`` lists every end-of-turn token;
- ``gguf``: that folder converted by llama.cpp's own converter to one GGUF file (weights, tokenizer, chat template and
  end-of-turn token in its metadata) in f16, q8_0 or q4_k_m, which llama.cpp, Ollama and LM Studio load as it is; for
  the shipped base also the adapter as a GGUF LoRA that applies to the very GGUF file the server's base was
  dequantized from. An Ollama ``Modelfile`` beside each (FROM / ADAPTER, TEMPLATE, SYSTEM, PARAMETER stop).

Every format carries the chat template the model was trained with (a brought model's own) and a ``take_home.json``
that says what is where.
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from helpers.pricing import catalogue
from helpers.server import llamacpp, localmodels
from helpers.server.chat_template import TurnMarkers, turn_markers
from helpers.server.records import ModelRecord, Models
from helpers.server.shared import ADAPTER_FILES
from helpers.server.store import Store, owner_of

FORMATS = ("peft", "merged", "gguf")
QUANTS = ("f16", "q8_0", "q4_k_m")


@dataclass(frozen=True)
class Exportable:
    """A fine-tuned model found in the store: its name, its adapter's folder and its base."""

    model: str
    adapter: Path
    base: catalogue.LocalBase

    @property
    def base_folder(self) -> Path:
        return localmodels.weights_dir(self.base)

    @property
    def slug(self) -> str:
        """The model's name as a file name (``ft:gpt-4.1-mini:workbook:billing:ab12`` -> ``gpt-4.1-mini-billing-ab12``)."""
        parts = [p for p in self.model.split(":")[1:] if p not in ("workbook", "")] or [self.model]
        return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts))

    @property
    def shipped_gguf(self) -> Path | None:
        """The GGUF file the shipped base was dequantized from (a brought .gguf is one too); None for a brought folder."""
        return localmodels.gguf_path(self.base) if localmodels.made_from_gguf(self.base) else None


def find(data_dir: Path, key: str, model: str) -> Exportable:
    store, owner = Store(data_dir), owner_of(key)
    card = Models(store).get(model, owner)
    if card is None:
        raise LookupError(f"No fine-tuned model {model!r} on the local server (data in {store.data_dir}). "
                          "client.models.list() lists yours; a checkpoint's model is exported through its job's final model.")
    return Exportable(model, store.model_dir(owner, model), _base_of(card))


def export_model(data_dir: Path, key: str, model: str, target: Path, format: str = "peft", quant: str = "f16") -> Path:
    """Write ``key``'s fine-tuned ``model`` from the store in ``data_dir`` into the folder ``target`` in ``format``
    (``FORMATS``; ``quant`` for gguf: ``QUANTS``), with a ``take_home.json`` and a README saying how to run it."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if quant not in QUANTS:
        raise ValueError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    found = find(data_dir, key, model)
    target = Path(target)
    _check_replaceable(target)
    # Written beside the target, then put in its place: a failed export leaves no half-written folder and keeps an
    # earlier export that was there; a finished one replaces it whole (seen: exporting another model into notebook
    # 11's folder left the first model's GGUF beside the new one, and the sizes added both).
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
    partial.mkdir()  # mkdir, not mkdtemp: the export's folder gets the user's usual permissions, not the owner's alone
    try:
        _write(found, partial, format, quant)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _check_replaceable(target: Path) -> None:
    """An export goes into a new folder, an empty one, or one that holds an earlier export (its ``take_home.json``),
    which it replaces; any other folder is the user's, and is refused rather than emptied."""
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"--out {target} is a file: name a folder (new, empty, or an earlier export to replace).")
    if target.is_dir():
        present = sorted(p.name for p in target.iterdir())
        if present and "take_home.json" not in present:
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise FileExistsError(f"--out {target} already holds files that are not an export ({shown}); an export replaces "
                                  "its folder, so name a new or empty folder, or an earlier export's.")


def _write(found: Exportable, target: Path, format: str, quant: str) -> Path:
    model = found.model
    # The precision the server answers in here: bf16 on a machine with bf16 kernels, else fp32. Loaded in that dtype,
    # transformers + peft compute what the server computes (notebook 10 measures it).
    dtype = str(localmodels.compute_dtype()).removeprefix("torch.")
    took: dict[str, str | None] = {"model": model, "format": format, "base": found.base.name, "base_source": found.base.source,
            "base_folder": str(found.base_folder), "dtype": dtype}
    if format == "peft":
        for name in ADAPTER_FILES:
            shutil.copy(found.adapter / name, target / name)
    elif format == "merged":
        write_merged(found, target)
    else:
        took |= write_gguf(found, target, quant)
    (target / "take_home.json").write_text(json.dumps(took, indent=2) + "\n", encoding="utf-8")
    (target / "README.md").write_text(_readme(found, took), encoding="utf-8")
    return target


def write_merged(found: Exportable, target: Path) -> Path:
    """The adapter merged into the base in fp32 (``merge_and_unload``), saved with the base's tokenizer (and so its chat
    template) and a generation config that stops at every end-of-turn token and decodes greedily, as the server does."""
    import warnings

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a command's output is its result, not loading bars
    with localmodels.LOADING, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers property deprecated for v6
        tokenizer = AutoTokenizer.from_pretrained(found.base_folder)
        base = AutoModelForCausalLM.from_pretrained(found.base_folder, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(found.adapter)).merge_and_unload()
    stops = sorted(localmodels.stop_token_ids(found.base_folder, tokenizer))
    config = merged.generation_config
    config.eos_token_id = stops if len(stops) > 1 else stops[0]
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def write_gguf(found: Exportable, target: Path, quant: str) -> dict[str, str | None]:
    """One GGUF file of the merged model (and, on a base made from a GGUF file, a GGUF LoRA adapter for that file), an
    Ollama Modelfile for each; returns what take_home.json records of them."""
    from transformers import AutoTokenizer

    llamacpp.vendor_dir()  # raises LlamaCppMissing before any merging when llama.cpp is not installed
    model_file = target / f"{found.slug}-{quant}.gguf"
    with tempfile.TemporaryDirectory(prefix=".merging-", dir=target) as scratch:
        merged = write_merged(found, Path(scratch) / "merged")
        if quant in llamacpp.QUANTIZED_TYPES:
            llamacpp.quantize(llamacpp.convert_model(merged, Path(scratch) / "f16.gguf", "f16"), model_file, quant)
        else:
            llamacpp.convert_model(merged, model_file, quant)
    tokenizer = AutoTokenizer.from_pretrained(found.base_folder)
    stops = [str(tokenizer.convert_ids_to_tokens(i)) for i in sorted(localmodels.stop_token_ids(found.base_folder, tokenizer))]
    markers = turn_markers(tokenizer)
    (target / "Modelfile").write_text(modelfile(found.model, f"./{model_file.name}", None, markers, stops), encoding="utf-8")
    recorded: dict[str, str | None] = {"gguf": model_file.name, "quant": quant, "adapter_gguf": None, "base_gguf": None}
    if found.shipped_gguf is not None:
        adapter_file = target / f"{found.slug}-lora-f16.gguf"
        llamacpp.convert_adapter(found.base_folder, found.adapter, adapter_file, "f16")
        (target / "Modelfile.adapter").write_text(
            modelfile(found.model, str(found.shipped_gguf), f"./{adapter_file.name}", markers, stops), encoding="utf-8")
        recorded |= {"adapter_gguf": adapter_file.name, "base_gguf": str(found.shipped_gguf)}
    return recorded


def ollama_template(markers: TurnMarkers) -> str:
    """The chat template as an Ollama (Go) template: each message between its role's markers, then the assistant's
    prefix to ask for an answer. Ollama adds the Modelfile's SYSTEM when a conversation has no system message."""
    def text(part: str) -> str:  # literal text; "{{" would open an action
        return part.replace("{{", '{{ "{{" }}')

    roles = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{text(markers.prefix[role])}{{{{ .Content }}}}'
                    f"{text(markers.suffix[role])}" for i, role in enumerate(("system", "user", "assistant")))
    return f"{text(markers.start)}{{{{ range .Messages }}}}{roles}{{{{ end }}}}{{{{ end }}}}{text(markers.prefix['assistant'])}"


def modelfile(model: str, source: str, adapter: str | None, markers: TurnMarkers | None, stops: list[str]) -> str:
    """An Ollama Modelfile: the weights (and adapter), the template, the default system message, the stop tokens, and
    greedy decoding (the server's default, so the answers are the server's)."""
    lines = [f"# {model}, exported by the Fine-Tuning & Distillation Workbook.",
             "# Run: ollama create billing -f Modelfile   then: ollama run billing \"your request\"",
             f"FROM {source}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    if markers is not None:
        lines.append(f'TEMPLATE """{ollama_template(markers)}"""')
        if markers.default_system is not None:
            lines.append(f'SYSTEM """{markers.default_system}"""')
    else:
        lines.append("# No TEMPLATE: this chat template is not a plain sequence of turns; Ollama reads the template the "
                     "GGUF file carries (tokenizer.chat_template) and picks its own matching one.")
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def _base_of(card: ModelRecord) -> catalogue.LocalBase:
    """The base a fine-tuned model was trained on: the shipped one by name, or a brought one where it was brought from."""
    name, location = card.base or "", card.base_location
    if location:
        if not Path(location).exists():
            raise LookupError(f"The base model {name} of {card.id} was brought from {location}, which is gone; put it back "
                              "there to export the model.")
        return catalogue.LocalBase(name, "", Path(location).name, 0, 0, f"{name} (brought from {location})", location)
    return catalogue.base_models()[name]


def _readme(found: Exportable, took: dict[str, str | None]) -> str:
    dtype, base = took["dtype"], found.base.source
    head = f"# {found.model}\n\nFine-tuned by the Fine-Tuning & Distillation Workbook's local server on {base}; exported as `{took['format']}`.\n\n"
    if took["format"] == "peft":
        return head + f"""A LoRA adapter in peft's format. The server answered with it in {dtype}: load the base in that dtype to get the
server's answers token for token.

- transformers + peft: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.{dtype}), "<this folder>")`
- vLLM: `vllm serve BASE --enable-lora --lora-modules billing=<this folder>`, then call model "billing"
- llama.cpp or Ollama: export again with `--format gguf`

BASE is the base model's folder (`base_folder` in take_home.json) or its name on the Hugging Face Hub.
"""
    if took["format"] == "merged":
        return head + """The adapter merged into the base: a plain Hugging Face folder with the tokenizer, the chat template and a
generation config that stops at the end-of-turn token. No peft needed:

- transformers: `AutoModelForCausalLM.from_pretrained("<this folder>")`, prompts from `tokenizer.apply_chat_template`
- vLLM: `vllm serve <this folder>`
- llama.cpp: `python convert_hf_to_gguf.py <this folder>` (or export again with `--format gguf`)
"""
    adapter = ""
    if took.get("adapter_gguf"):
        adapter = f"""
- `{took['adapter_gguf']}` is the adapter alone, for the GGUF file the server's base was made from ({took['base_gguf']}):
  `llama-cli -m {took['base_gguf']} --lora {took['adapter_gguf']}`, or `ollama create billing -f Modelfile.adapter`.
"""
    return head + f"""`{took['gguf']}` ({took['quant']}) is the whole model for llama.cpp, with its tokenizer, chat template and
end-of-turn token inside:

- llama.cpp: `llama-cli -m {took['gguf']} -cnv` or `llama-server -m {took['gguf']}` (an OpenAI-compatible server)
- llama-cpp-python: `Llama(model_path="{took['gguf']}").create_chat_completion(messages=..., temperature=0)`
- Ollama: `ollama create billing -f Modelfile`, then `ollama run billing`
{adapter}
Greedy decoding (temperature 0) gives the server's answers; f16 agrees with it best, q8_0 nearly as well, q4_k_m less.
"""
