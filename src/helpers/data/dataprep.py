"""Getting a team's data into a fine-tuning file: CSV to chat JSONL, and a train/validation split."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path


class DataError(ValueError):
    """A problem with the input data; the message names the file, line and what to do."""


def csv_to_chat_jsonl(source: Path, target: Path, *, prompt_column: str, completion_column: str,
                      system_prompt: str = "") -> int:
    """Write one chat example per CSV row (system prompt, the prompt column as user, the completion column
    as assistant); return the number of examples."""
    source, target = Path(source), Path(target)
    with open(source, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for column in (prompt_column, completion_column):
            if column not in columns:
                raise DataError(f"{source}: no column {column!r}; the columns are {columns}. Set CSV_PROMPT_COLUMN and "
                                "CSV_COMPLETION_COLUMN to the right names.")
        target.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with open(target, "w", encoding="utf-8") as out:
            for line, row in enumerate(reader, start=2):
                prompt, completion = (row.get(prompt_column) or "").strip(), (row.get(completion_column) or "").strip()
                if not prompt or not completion:
                    raise DataError(f"{source}, line {line}: empty {prompt_column if not prompt else completion_column!r}. "
                                    "Fill it in or remove the row.")
                messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                    {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
                out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
                count += 1
    return count


def as_jsonl(path: Path, work_dir: Path, **csv_mapping: str) -> Path:
    """The dataset as a JSONL path: a .jsonl is used as it is, a .csv is converted into ``work_dir``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist. Set DATASET_PATH to a .jsonl or .csv file.")
    if path.suffix.lower() == ".csv":
        target = Path(work_dir) / f"{path.stem}.jsonl"
        csv_to_chat_jsonl(path, target, **csv_mapping)
        return target
    return path


def split_file(path: Path, out_dir: Path, validation_fraction: float, seed: int) -> tuple[Path, Path]:
    """Shuffle the lines of a JSONL file and write train and validation files (blank lines dropped)."""
    if not 0 < validation_fraction < 1:
        raise DataError(f"VALIDATION_FRACTION must be between 0 and 1, got {validation_fraction}.")
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    n_valid = max(1, round(len(lines) * validation_fraction))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, valid = out_dir / f"{Path(path).stem}_train.jsonl", out_dir / f"{Path(path).stem}_validation.jsonl"
    train.write_text("".join(line + "\n" for line in lines[n_valid:]), encoding="utf-8")
    valid.write_text("".join(line + "\n" for line in lines[:n_valid]), encoding="utf-8")
    return train, valid


def take(path: Path, n: int, out_dir: Path) -> Path:
    """The first ``n`` examples of a JSONL file as a file of their own (``n = 0``: the file as it is)."""
    path = Path(path)
    if n == 0:
        return path
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if n > len(lines):
        raise DataError(f"{path} has {len(lines)} examples; asked for {n}. Use 0 for all of them.")
    target = Path(out_dir) / f"{path.stem}_{n}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(line + "\n" for line in lines[:n]), encoding="utf-8")
    return target


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """Write one JSON object a line (UTF-8, non-ASCII kept as it is); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path, n: int = 0) -> list[dict]:
    """The first ``n`` objects of a JSONL file (0: all)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n] if n else rows
