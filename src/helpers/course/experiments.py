"""Several fine-tuning jobs that differ in one thing, trained through the same API and scored the same way.

Notebooks 06 (epochs and learning rates) and 07 (corrupted labels) use it: pick a few procedures so that
every job fits in a minute or two, write one training file per variant, start every job at once (the server
trains them one after another), wait for all of them, and score each model on the same held-out requests.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.course import evaluation, finetune
from helpers.course.billing import BILLING_DIR, load_codes, parse_answer
from helpers.data.dataprep import DataError, read_jsonl, write_jsonl


def expected_code(row: dict) -> str:
    """The code a course example's answer names."""
    parsed = parse_answer(row["messages"][-1]["content"])
    if parsed is None:
        raise DataError(f"Not a course answer: {row['messages'][-1]['content']!r}.")
    return parsed[0]


def pick_codes(n_codes: int, seed: int) -> list[str]:
    """``n_codes`` of the course's trained codes, drawn with ``seed`` (0 means all of them), in table order."""
    trained = [c.code for c in load_codes() if c.in_training]
    if not 0 <= n_codes <= len(trained):
        raise DataError(f"N_CODES must be between 1 and {len(trained)} (0 means all), got {n_codes}.")
    chosen = set(random.Random(seed).sample(trained, n_codes)) if n_codes else set(trained)
    return [code for code in trained if code in chosen]


def for_codes(path: Path, codes: list[str], per_code: int = 0) -> list[dict]:
    """The examples of a course file whose answer is one of ``codes`` (the first ``per_code`` of each; 0: all)."""
    wanted, taken, out = set(codes), {}, []
    for row in read_jsonl(path):
        code = expected_code(row)
        if code in wanted and (not per_code or taken.get(code, 0) < per_code):
            taken[code] = taken.get(code, 0) + 1
            out.append(row)
    return out


def held_out(codes: list[str]) -> list[dict]:
    """The course's held-out requests for ``codes``: the test file's, then the validation file's (phrasings no
    training file holds)."""
    return for_codes(BILLING_DIR / "test.jsonl", codes) + for_codes(BILLING_DIR / "validation.jsonl", codes)


def start_jobs(client, files: dict[str, Path], *, validation_file: Path | None, model: str, hyperparameters: dict[str, dict],
               seed: int, lesson: str) -> dict[str, Any]:
    """Upload each variant's training file and start its job (all at once: the server queues them; a workshop server
    that runs only a few jobs per key at a time is waited for). Jobs carry
    ``{"course": lesson, "variant": name}`` as metadata, so a restarted kernel can find them and notebooks 04
    and 05 never take them for 03's model."""
    valid_id = finetune.upload(client, validation_file).id if validation_file else None
    uploaded: dict[Path, str] = {}
    jobs = {}
    for name, path in files.items():
        if path not in uploaded:
            uploaded[path] = finetune.upload(client, path).id
        jobs[name] = finetune.start_job(client, wait_for_slot=True, training_file=uploaded[path], validation_file=valid_id, model=model,
                                        suffix=lesson.replace("_", "-")[:40], seed=seed, hyperparameters=hyperparameters[name],
                                        metadata={"course": lesson, "variant": name})
    return jobs


def wait_for(client, jobs: dict[str, Any]) -> dict[str, Any]:
    """Follow each job to its end (a progress bar each); a failed job stops here with the server's message."""
    done = {}
    for name, job in jobs.items():
        print(f"{name}:")
        done[name] = finetune.follow(client, job.id, show_events=False)
        if done[name].status != "succeeded":
            error = done[name].error.message if done[name].error else "no message"
            raise RuntimeError(f"The job for {name!r} ({job.id}) ended {done[name].status}: {error}")
    return done


def score(client, models: dict[str, str], test: list[dict], *, priced_as: str, max_tokens: int = 32) -> pd.DataFrame:
    """Each model on the same held-out requests: one column of :func:`evaluation.summarize` numbers per model."""
    return pd.DataFrame({name: evaluation.summarize(evaluation.evaluate(client, model, test, max_tokens=max_tokens, concurrency=16),
                                                    priced_as=priced_as, fine_tuned=True)
                         for name, model in models.items()})


def write_variants(rows_by_variant: dict[str, list[dict]], out_dir: Path, stem: str) -> dict[str, Path]:
    """One training file per variant, named ``<stem>_<variant>.jsonl``."""
    return {name: write_jsonl(rows, Path(out_dir) / f"{stem}_{_slug(name)}.jsonl") for name, rows in rows_by_variant.items()}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def validation_table(files: dict[str, Path], *, model: str, n_epochs: int | str) -> pd.DataFrame:
    """Notebook 02's validator on each variant's file: examples, errors, (near-)duplicate warnings, the verdict and
    the OpenAI training price of ``n_epochs`` over it (one column per variant)."""
    from helpers.data.validate import validate_file

    reports = {name: validate_file(path, model=model, n_epochs=n_epochs) for name, path in files.items()}
    return pd.DataFrame({name: {"examples": r.n_examples, "errors": len(r.errors),
                                "duplicate warnings": r.stats["exact_duplicates"] + r.stats["near_duplicates"],
                                "passes": r.ok, "training cost on OpenAI (USD)": r.cost["cost_usd"]}
                         for name, r in reports.items()})
