"""After OpenAI's wind-down (notebook 10): what a refused account sees, and how to take a model fine-tuned on the local
server home, in the formats open-source tools load.

A model the local server trains is the base model's weights (SmolLM2-135M-Instruct, a plain transformers folder)
plus a LoRA adapter in peft's format: ``adapter_config.json`` and ``adapter_model.safetensors``. transformers +
peft, vLLM (``--enable-lora``) and llama.cpp (after converting the adapter to GGUF) all load that pair.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

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


def try_to_train(client, path: Path, model: str) -> tuple[str, str]:
    """Upload ``path`` and ask for a job twice: with the ``openai`` client's own call, and through the course's helper.
    Returns what each says when the server refuses: the exception the client raises (its class and message, as a
    traceback's last line shows it, and the status and code your code can test) and the helper's sentence."""
    import openai

    file_id = finetune.upload(client, path).id
    try:
        job = client.fine_tuning.jobs.create(training_file=file_id, model=model)
    except openai.APIStatusError as exc:
        raised = f"openai.{type(exc).__name__}: {exc}\n  (exc.status_code = {exc.status_code}, exc.code = {exc.code!r})"
    else:
        client.fine_tuning.jobs.cancel(job.id)
        raise RuntimeError(f"The server started job {job.id} (now cancelled): it does not refuse training.")
    try:
        finetune.start_job(client, training_file=file_id, model=model)
    except finetune.TrainingNotAvailable as exc:
        return raised, str(exc)
    raise RuntimeError("The server refused the client's call but not the helper's.")


def export_model(model: str, target: Path) -> Path:
    """Copy a fine-tuned model of the local server out of its store into ``target`` (with ``workbook export``, the
    server's own tool for it): the adapter's two files, a ``take_home.json`` naming the base model's folder, and a
    README saying how to load them. Returns ``target``."""
    from helpers.course import take_home

    take_home.export(model, target, format="peft")
    return Path(target)


def load(folder: Path):
    """The exported model as transformers + peft load it: ``(model, tokenizer)``."""
    import warnings

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    took = json.loads((Path(folder) / "take_home.json").read_text(encoding="utf-8"))
    base_folder, dtype = took["base_folder"], getattr(torch, took.get("dtype", "float32"))  # the server's precision
    transformers_logging.disable_progress_bar()  # a loading bar per call is noise in a notebook
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers property deprecated for v6
        tokenizer = AutoTokenizer.from_pretrained(base_folder)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder, dtype=dtype), str(folder))
    return model.eval(), tokenizer


def answer(model, tokenizer, messages: list[dict], max_new_tokens: int = 32) -> str:
    """A greedy answer to ``messages`` (the chat template the server uses)."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def at_home_and_served(model, tokenizer, client, tuned: str, requests: list[list[dict]], max_tokens: int = 32) -> pd.DataFrame:
    """Each request answered greedily by the exported model (transformers + peft, in this kernel) and by the server,
    one at a time: a row per request with both answers and whether they are the same text."""
    rows = []
    for messages in requests:
        at_home = answer(model, tokenizer, messages, max_tokens)
        served = client.chat.completions.create(model=tuned, messages=messages, max_tokens=max_tokens, temperature=0)
        served_text = (served.choices[0].message.content or "").strip()
        rows.append({"request": messages[-1]["content"], "transformers + peft": at_home, "local server": served_text,
                     "same": at_home == served_text})
    return pd.DataFrame(rows)


def base_folder(exported: Path) -> Path:
    """The base model's folder an exported model names (``take_home.json``): open weights in Hugging Face's format."""
    return Path(json.loads((Path(exported) / "take_home.json").read_text(encoding="utf-8"))["base_folder"])


@dataclass(frozen=True)
class Brought:
    """A second local server that brings a model under a name of the team's, as ``command`` starts one by hand."""

    client: Any
    command: str
    port: int


def bring(name: str, source: Path, port: int | None = None) -> Brought:
    """Start a local server that brings ``source`` (a Hugging Face folder or a .gguf file) as ``name``, beside the
    course's server (two ports on), with a data folder of its own; stop it with :func:`stop_rehearsal` (``port``)."""
    from openai import OpenAI

    from helpers.course.backend import default_data_dir, local_key, local_port, local_server

    port = port or local_port() + 2
    spec = f"{name}={source}"
    server = local_server(port, default_data_dir().parent / "brought", models=[spec])
    return Brought(OpenAI(base_url=server.api_url, api_key=local_key()), f"workbook serve --model {name}=FOLDER", port)


def same_request(clients: dict[str, Any], messages: list[dict], max_tokens: int = 32) -> pd.DataFrame:
    """Each model (name -> the client of the server that serves it) asked ``messages`` with the same call, greedy:
    its answer, how long it took and tokens per second (after a one-token request, so a server's first load of the
    model is not timed), and from the server's /health the base model's parameters, device and dtype and the server's
    resident memory. One row per model."""
    import time

    import httpx

    from helpers.pricing.catalogue import resolve_base

    rows = {}
    for model, client in clients.items():
        client.chat.completions.create(model=model, messages=messages, max_tokens=1)
        started = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        seconds = time.perf_counter() - started
        health = httpx.get(str(client.base_url).removesuffix("/").removesuffix("/v1") + "/health", timeout=10).json()
        base = resolve_base(model)
        loaded = next(m for m in health["models"] if m["base"] in {model, base.name if base else model})
        rows[model] = {"answer": reply.choices[0].message.content, "seconds": round(seconds, 2),
                       "tokens/s": round(reply.usage.completion_tokens / seconds, 1), "parameters (M)": round(loaded["parameters"] / 1e6, 1),
                       "device": loaded["device"], "dtype": loaded["dtype"],
                       "server memory (MB)": None if health["memory"]["resident_mb"] is None else round(health["memory"]["resident_mb"])}
    return pd.DataFrame.from_dict(rows, orient="index")


def brought_findings(table: pd.DataFrame, course_model: str, brought: str) -> list[str]:
    """What the comparison shows: the same client code asked both; same weights answer the same."""
    ours, theirs = table.loc[course_model], table.loc[brought]
    same = ours["answer"] == theirs["answer"]
    return [f"The same call, `client.chat.completions.create(model=...)`, asked {course_model} on the course's server and "
            f"{brought} on the server that brings it; only the model name differs.",
            (f"Both gave the same answer, word for word: {brought} is the same weights ({theirs['parameters (M)']:g}M "
             "parameters), brought from the folder you took home, and at temperature 0 the same weights answer the same."
             if same else f"They answered differently, though {brought} is the same weights ({theirs['parameters (M)']:g}M "
             "parameters): compare the two servers' settings (`workbook doctor`)."),
            f"On this machine ({theirs['device']}, {theirs['dtype']}) {brought} answered at {theirs['tokens/s']:g} tokens/s"
            + (f", and its server held {theirs['server memory (MB)']:,.0f} MB" if pd.notna(theirs["server memory (MB)"]) else "")
            + ". A model with more parameters takes more memory and more time per token, about in proportion; what it gains "
            "in quality is what notebook 04 measures on your data."]
