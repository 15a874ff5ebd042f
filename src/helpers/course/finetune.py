"""Running a fine-tuning job from a notebook, on either backend, with the plain ``openai`` client."""
from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import openai
import pandas as pd
from tqdm.auto import tqdm

from helpers.pricing.costs import price_table

TERMINAL = {"succeeded", "failed", "cancelled"}
#: The metadata notebook 03 puts on its jobs, so that notebooks 04 and 05 find its model.
COURSE_METADATA = {"course": "billing"}


class TrainingNotAvailable(RuntimeError):
    """OpenAI refused to start a job (403 training_not_available): what it means and what to do."""


class OverBudget(RuntimeError):
    """The estimated cost is above MAX_SPEND_USD; nothing was started."""


def budget_guard(backend: str, estimate_usd: float | None, max_spend_usd: float) -> str:
    """Refuse to train on OpenAI unless the budget covers the estimate; the local backend is free. No estimate (an
    open model, which OpenAI does not sell) cannot be checked against a budget, so OpenAI is refused then."""
    if backend != "openai":
        on_openai = "an open model, which OpenAI does not sell" if estimate_usd is None else f"on OpenAI it would be about ${estimate_usd:.2f}"
        return f"Local backend: this job costs $0 ({on_openai})."
    if estimate_usd is None:
        raise OverBudget("There is no OpenAI price for this model, so MAX_SPEND_USD cannot be checked: OpenAI trains only "
                         "its own models (data/models.json). Train an open model with BACKEND = \"local\".")
    if estimate_usd > max_spend_usd:
        raise OverBudget(f"Estimated training cost ${estimate_usd:.2f} is above MAX_SPEND_USD = ${max_spend_usd:.2f}. "
                         "Raise MAX_SPEND_USD if you mean it, or train on fewer examples or epochs.")
    return f"Estimated ${estimate_usd:.2f}, within MAX_SPEND_USD = ${max_spend_usd:.2f}."


def upload(client, path: Path) -> Any:
    with open(path, "rb") as handle:
        return client.files.create(file=handle, purpose="fine-tune")


def start_job(client, *, wait_for_slot: bool = False, **create: Any) -> Any:
    """``client.fine_tuning.jobs.create(**create)``, with OpenAI's 403 and a busy server's 429 explained instead of a
    traceback. ``wait_for_slot``: when the server runs as many of this key's jobs as it allows (429), wait as it says
    and ask again, instead of stopping (for notebooks that start several jobs on a workshop server)."""
    while True:
        try:
            return _create_job(client, create)
        except _Busy as busy:
            if not wait_for_slot:
                raise TrainingNotAvailable(str(busy)) from None
            print(f"{busy} Waiting {busy.wait_s} s.")
            time.sleep(busy.wait_s)


class _Busy(Exception):
    def __init__(self, message: str, wait_s: int) -> None:
        super().__init__(message)
        self.wait_s = wait_s


def _notice_without_prices() -> str:
    """The price table's wind-down notice, without its pointer to "the inference prices below" (a refusal shows none)."""
    notice, pointer = price_table()["notice"], " at the inference prices below."
    return notice[:-len(pointer)] + "." if notice.endswith(pointer) else notice


def _create_job(client, create: dict[str, Any]) -> Any:
    try:
        return client.fine_tuning.jobs.create(**create)
    except openai.PermissionDeniedError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        said = str(body.get("message") or exc.message).rstrip(".")
        raise TrainingNotAvailable(
            f"The service refused to start the job ({body.get('code') or exc.status_code}): {said}. {_notice_without_prices()} "
            "Run this notebook with BACKEND = \"local\" to train the same way on this machine.") from None
    except openai.RateLimitError as exc:
        wait = exc.response.headers.get("retry-after")
        raise _Busy(f"The server is busy for your key: {exc.message}" + (f" Try again in about {wait} s." if wait else ""),
                    int(wait) if wait and wait.isdigit() else 30) from None


def follow(client, job_id: str, *, poll_s: float = 1.0, show_events: bool = True) -> Any:
    """Wait for a job with a progress bar over its steps, printing its messages as they arrive."""
    seen: set[str] = set()
    bar = tqdm(total=None, unit="step", desc=job_id[-8:])
    job = client.fine_tuning.jobs.retrieve(job_id)
    while True:
        events = list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data))
        for event in events:
            if event.id in seen:
                continue
            seen.add(event.id)
            data = event.data if isinstance(event.data, dict) else {}
            if event.type == "metrics" and "step" in data:
                bar.total = data.get("total_steps", bar.total)
                bar.n = data["step"]
                bar.set_postfix(loss=f"{data.get('train_loss', float('nan')):.3f}")
                bar.refresh()
            elif show_events:
                bar.write(f"[{job.status}] {event.message}")
        if job.status in TERMINAL:
            break
        time.sleep(poll_s)
        job = client.fine_tuning.jobs.retrieve(job_id)
    bar.close()
    # The bar is a widget in Jupyter, and a saved notebook keeps only its first frame ("0step"): say where it ended.
    print(f"{job_id[-8:]}: {job.status} at step {bar.n}" + (f" of {bar.total}" if bar.total else "")
          + f" (followed for {bar.format_dict['elapsed']:.0f} s)")
    return job


def results_frame(client, job: Any) -> pd.DataFrame:
    """The job's step metrics from its results file (base64 CSV, as OpenAI returns it)."""
    if not job.result_files:
        return pd.DataFrame()
    raw = client.files.content(job.result_files[0]).read()
    return pd.read_csv(io.BytesIO(base64.b64decode(raw)))


def checkpoints_frame(client, job_id: str) -> pd.DataFrame:
    rows = [{"step": c.step_number, "model": c.fine_tuned_model_checkpoint, **c.metrics.model_dump(exclude_none=True)}
            for c in client.fine_tuning.jobs.checkpoints.list(job_id).data]
    return pd.DataFrame(rows)


def plot_results(frame: pd.DataFrame, checkpoints: pd.DataFrame | None = None):
    """Loss and token accuracy per step: training, the sampled validation batches, and (from the checkpoints)
    the whole validation file at each epoch's end."""
    import matplotlib.pyplot as plt

    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss.plot(frame["step"], frame["train_loss"], label="training", alpha=0.6)
    accuracy.plot(frame["step"], frame["train_accuracy"], label="training", alpha=0.6)
    valid = frame.dropna(subset=["valid_loss"])
    if len(valid):
        loss.plot(valid["step"], valid["valid_loss"], ".:", label="validation, one batch")
        accuracy.plot(valid["step"], valid["valid_mean_token_accuracy"], ".:", label="validation, one batch")
    if checkpoints is not None and "full_valid_loss" in checkpoints:
        full = checkpoints.dropna(subset=["full_valid_loss"]).sort_values("step")
        loss.plot(full["step"], full["full_valid_loss"], "s-", markersize=8, label="validation, whole file")
        accuracy.plot(full["step"], full["full_valid_mean_token_accuracy"], "s-", markersize=8, label="validation, whole file")
    loss.set(xlabel="step", ylabel="loss", title="Loss")
    accuracy.set(xlabel="step", ylabel="token accuracy", title="Token accuracy")
    loss.legend()
    accuracy.legend()
    return figure


def curve_findings(frame: pd.DataFrame, checkpoints: pd.DataFrame) -> list[str]:
    """What a job's curves show, in sentences computed from them (notebook 03)."""
    lines = [f"Training loss went from {frame['train_loss'].iloc[0]:.3f} at the first step to "
             f"{frame['train_loss'].iloc[-1]:.3f} at the last."]
    full = checkpoints.dropna(subset=["full_valid_loss"]).sort_values("step") if "full_valid_loss" in checkpoints else None
    losses = [] if full is None else [float(v) for v in full["full_valid_loss"]]  # none without a validation file
    sampled = frame.dropna(subset=["valid_loss"])
    if losses and len(sampled):
        last = sampled.iloc[-1]
        lines.append(f"The validation batch sampled at step {int(last['step'])} gave {last['valid_loss']:.3f}; the whole "
                     f"validation file at the end gave {losses[-1]:.3f}. The sampled points range from "
                     f"{sampled['valid_loss'].min():.3f} to {sampled['valid_loss'].max():.3f}: one batch is a noisy estimate, "
                     "so judge the fit on the whole-file points, one per epoch.")
    if len(losses) >= 2:
        best = losses.index(min(losses))
        trail = ", ".join(f"{v:.3f}" for v in losses)
        if all(b < a for a, b in zip(losses, losses[1:])):
            lines.append(f"Whole-file validation loss by epoch: {trail}. It fell every epoch: no sign of memorising yet.")
        elif best == len(losses) - 1:
            lines.append(f"Whole-file validation loss by epoch: {trail}. It rose in between but ended at its lowest: keep "
                         "the last checkpoint, and watch the next run.")
        else:
            lines.append(f"Whole-file validation loss by epoch: {trail}. It was lowest after epoch {best + 1} and rose after: "
                         f"the model began to memorise; the checkpoint of epoch {best + 1} is the one to keep.")
    elif len(losses) == 1:
        lines.append(f"Whole-file validation loss after the one epoch: {losses[0]:.3f}; a trend needs two epochs or more.")
    return lines


def latest_job(client, metadata: dict[str, str]) -> Any:
    """The newest job whose metadata includes ``metadata``: how a restarted kernel finds the job it was following."""
    jobs = client.fine_tuning.jobs.list(limit=1, metadata=metadata).data
    if not jobs:
        raise LookupError(f"No fine-tuning job with metadata {metadata} on this backend: start one first.")
    return jobs[0]


def latest_model(client, metadata: dict[str, str]) -> str | None:
    """The fine-tuned model of the newest succeeded job whose metadata includes ``metadata``."""
    for job in client.fine_tuning.jobs.list(limit=100, metadata=metadata).data:
        if job.status == "succeeded" and job.fine_tuned_model:
            return job.fine_tuned_model
    return None


STUDENT_METADATA = {"course": "billing-student"}


def student_model(client, name: str = "") -> str:
    """``name`` if given, else the newest student notebook 05 distilled; a clear error when there is none."""
    model = name or latest_model(client, STUDENT_METADATA)
    if not model:
        raise LookupError("No distilled student yet: run 05_distillation first, or set the model name in the parameters cell.")
    return model


def course_model(client, name: str = "") -> str:
    """``name`` if given, else the newest model notebook 03 trained; a clear error when there is none."""
    model = name or latest_model(client, COURSE_METADATA)
    if not model:
        raise LookupError("No fine-tuned model yet: run 03_training first, or set the model name in the parameters cell.")
    return model
