"""Validate a fine-tuning JSONL file in one streaming pass: verdict, token counts, statistics, cost.

Memory stays flat whatever the file's size: lines are read one at a time, token statistics are kept as
histograms (exact quantiles with constant memory), problems are capped per code (all are counted), and
duplicate detection keeps 20 bytes per example (two 64-bit hashes and a line number).

Token counting runs in a background thread on chunks of text while the main thread parses the next
chunk; ``tiktoken`` releases the GIL while it encodes, so parsing and encoding overlap on two cores.
"""
from __future__ import annotations

import bisect
import json
import string
from array import array
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tiktoken

from helpers.data import chat_format as cf
from helpers.data.report import Problem, ValidationReport
from helpers.data.token_counts import ToolTokenCache, role_token_table, token_parts
from helpers.data.tokens import get_encoding
from helpers.pricing.catalogue import default_model, model_info
from helpers.pricing.costs import estimate_training_cost

MIN_EXAMPLES = 10
MAX_PROBLEMS_PER_CODE = 50
CHUNK_TEXTS = 20_000
SEPARATOR = "<|endoftext|>"
_IGNORED_FOR_DUPLICATES = (string.punctuation + string.whitespace).encode()


class _Problems:
    """Keeps the first MAX_PROBLEMS_PER_CODE problems of each code, counts all of them."""

    def __init__(self) -> None:
        self.kept: list[Problem] = []
        self.counts: Counter[str] = Counter()

    def add(self, line: int | None, code: str, message: str) -> None:
        self.counts[code] += 1
        if self.counts[code] <= MAX_PROBLEMS_PER_CODE:
            self.kept.append(Problem(line, code, message))

    def total(self) -> int:
        return sum(self.counts.values())


def _histogram_summary(hist: Counter[int]) -> dict[str, float]:
    """min, mean, median, p5, p95, max of the values in a histogram; quantiles interpolate linearly
    between order statistics, exactly like ``numpy.percentile``'s default."""
    if not hist:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p5": 0.0, "p95": 0.0, "max": 0}
    values = sorted(hist)
    cumulative = list(np.cumsum([hist[v] for v in values]))
    n = int(cumulative[-1])

    def kth(k: int) -> int:  # k-th smallest, 0-based
        return values[bisect.bisect_right(cumulative, k)]

    def quantile(q: float) -> float:
        position = q * (n - 1)
        low = int(position)
        frac = position - low
        a = kth(low)
        return float(a if frac == 0 else a + (kth(low + 1) - a) * frac)

    total = sum(v * c for v, c in hist.items())
    return {"min": values[0], "mean": round(total / n, 3), "median": quantile(0.5),
            "p5": quantile(0.05), "p95": quantile(0.95), "max": values[-1]}


@dataclass
class _Chunk:
    """Examples whose texts are being encoded together."""

    lines: array = field(default_factory=lambda: array("I"))
    overheads: array = field(default_factory=lambda: array("q"))
    texts: list[str] = field(default_factory=list)
    owners: array = field(default_factory=lambda: array("I"))
    trained: array = field(default_factory=lambda: array("b"))


def encode_lengths(encoding: tiktoken.Encoding, texts: list[str]) -> np.ndarray:
    """Token count of each text, exactly what ``len(encoding.encode_ordinary(text))`` gives.

    The texts go into tiktoken's Rust core in one call, joined by ``<|endoftext|>`` allowed as a special
    token: tiktoken splits on special tokens *before* its regex runs, so each text is encoded on its own
    and the separators mark where each one ends (tests/test_validator.py checks equality on adversarial
    strings). One call keeps the GIL released for the whole chunk. Texts that contain the separator
    string themselves are counted one by one.
    """
    if not texts:
        return np.zeros(0, dtype=np.int64)
    joined = SEPARATOR.join(texts)
    eot = getattr(encoding, "eot_token", None)
    # The separator has no border (no prefix equal to a suffix), so it cannot straddle a text and a
    # separator: exactly n-1 occurrences means no text contains it.
    if eot is None or joined.count(SEPARATOR) != max(len(texts) - 1, 0):
        encode = encoding.encode_ordinary
        return np.fromiter((len(encode(t)) for t in texts), dtype=np.int64, count=len(texts))
    tokens = encoding.encode_to_numpy(joined, allowed_special={SEPARATOR}, disallowed_special=())
    bounds = np.concatenate(([-1], np.flatnonzero(tokens == eot), [len(tokens)]))
    return np.diff(bounds) - 1


def duplicate_key(text: str) -> bytes:
    """What two near-duplicate texts share: the text lower-cased, without ASCII punctuation or spaces."""
    return text.lower().encode("utf-8", "surrogatepass").translate(None, _IGNORED_FOR_DUPLICATES)


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb", buffering=1 << 20) as handle:
        yield from enumerate(handle, start=1)


class _Validator:
    def __init__(self, path: Path, model: str, min_examples: int, n_epochs: int | Literal["auto"] = "auto") -> None:
        self.path = path
        self.model = model
        self.min_examples = min_examples
        self.n_epochs = n_epochs
        info = model_info(model)
        self.limit = info.training_max_tokens_per_example
        self.encoding = get_encoding(info.encoding)
        self.roles = role_token_table(self.encoding)
        self.tools = ToolTokenCache(self.encoding)
        self.errors = _Problems()
        self.warnings = _Problems()
        self.format: str | None = None
        self.n_examples = 0
        self.valid = 0
        self.pending_blank: list[int] = []
        self.missing_system = 0
        self.missing_user = 0
        self.messages_hist: Counter[int] = Counter()
        self.total_hist: Counter[int] = Counter()
        self.assistant_hist: Counter[int] = Counter()
        self.total_tokens = 0
        self.billing_tokens = 0
        self.over_limit = 0
        self.exact_hashes = array("q")
        self.near_hashes = array("q")
        self.hash_lines = array("I")

    # -- per line -------------------------------------------------------------------------------
    def parse(self, number: int, raw: bytes) -> dict[str, Any] | None:
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            self.errors.add(1, "utf8_bom", "the file starts with a UTF-8 byte-order mark (BOM). Save it as UTF-8 without BOM.")
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.errors.add(number, "not_utf8", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}). Save the file as UTF-8.")
            return None
        try:
            obj = _DECODER.decode(text)
        except RecursionError:
            self.errors.add(number, "invalid_json", f"not valid JSON here: nested more than {cf.MAX_JSON_DEPTH} levels deep. Each line must be one example object.")
            return None
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            column = f" (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
            self.errors.add(number, "invalid_json", f"not valid JSON: {reason}{column}. Each line must be one complete JSON object.")
            return None
        problem = cf.text_problem(obj)
        if problem is not None:
            where, what, code = problem
            self.errors.add(number, code, f"{where}: {what}. " + ("Remove it or replace it with the character meant." if code == "invalid_text"
                                                                   else "Each line must be one example object."))
            return None
        if not isinstance(obj, dict):
            self.errors.add(number, "not_an_object", f"the line is a JSON {type(obj).__name__}, not an object. Each line must be one example object.")
            return None
        return obj

    def check(self, number: int, obj: dict[str, Any]) -> str | None:
        """Check one example; return its format when it is valid."""
        fmt = cf.detect_format(obj)
        if fmt is None:
            keys = ", ".join(sorted(obj)) or "none"
            self.errors.add(number, "unknown_format", f"not a fine-tuning example (keys: {keys}). A chat example needs 'messages'; a preference (DPO) example needs 'input', 'preferred_output' and 'non_preferred_output'; a reinforcement prompt needs 'messages' that end with the user's turn.")
            return None
        if fmt == cf.PROMPT and self.format == cf.CHAT:
            fmt = cf.CHAT  # a chat example without its reply: the chat rules say what it lacks
        if self.format is None:
            self.format = fmt
        elif fmt != self.format:
            self.errors.add(number, "mixed_formats", f"this is a {fmt} example but the file started with {self.format} examples. Put each format in its own file.")
            return None
        if fmt == cf.CHAT:
            errors, warnings, counts = cf.check_chat_example(obj)
        elif fmt == cf.PROMPT:
            errors, warnings, counts = cf.check_prompt_example(obj)
        else:
            errors, warnings, counts = cf.check_preference_example(obj)
        for issue in errors:
            self.errors.add(number, issue.code, issue.message)
        for issue in warnings:
            self.warnings.add(number, issue.code, issue.message)
        if errors:
            return None
        self.missing_system += counts["system"] == 0
        self.missing_user += counts["user"] == 0
        messages = obj["input"]["messages"] if fmt == cf.PREFERENCE else obj["messages"]
        self.messages_hist[len(messages)] += 1
        return fmt

    # -- tokens ---------------------------------------------------------------------------------
    def add_to_chunk(self, chunk: _Chunk, number: int, obj: dict[str, Any], fmt: str) -> None:
        parts = token_parts(obj, fmt, self.roles, self.tools)
        slot = len(chunk.lines)
        chunk.lines.append(number)
        chunk.overheads.append(parts.overhead)
        chunk.texts.extend(parts.texts)
        chunk.owners.extend([slot] * len(parts.texts))
        chunk.trained.extend(parts.trained)
        self.near_hashes.append(hash(duplicate_key(" ".join(parts.texts))))
        self.hash_lines.append(number)

    def finish_chunk(self, chunk: _Chunk, lengths: np.ndarray) -> None:
        n = len(chunk.lines)
        owners = np.frombuffer(chunk.owners, dtype=np.uint32) if chunk.owners else np.zeros(0, dtype=np.uint32)
        trained = np.frombuffer(chunk.trained, dtype=np.int8).astype(bool) if chunk.trained else np.zeros(0, dtype=bool)
        totals = np.frombuffer(chunk.overheads, dtype=np.int64) + np.bincount(owners, weights=lengths, minlength=n).astype(np.int64)
        trained_tokens = np.bincount(owners[trained], weights=lengths[trained], minlength=n).astype(np.int64)
        self.total_hist.update(totals.tolist())
        self.assistant_hist.update(trained_tokens.tolist())
        self.total_tokens += int(totals.sum())
        if self.limit is None:
            self.billing_tokens += int(totals.sum())
            return
        self.billing_tokens += int(np.minimum(totals, self.limit).sum())
        for slot in np.flatnonzero(totals > self.limit):
            self.over_limit += 1
            self.warnings.add(int(chunk.lines[slot]), "over_token_limit",
                              f"{int(totals[slot]):,} tokens, over {self.model}'s {self.limit:,}-token limit per training example; "
                              "OpenAI truncates it. Shorten or split the conversation.")

    # -- whole file -----------------------------------------------------------------------------
    def run(self) -> ValidationReport:
        chunk = _Chunk()
        in_flight: tuple[_Chunk, Future] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-count") as pool:
            for number, raw in _iter_lines(self.path):
                stripped = raw.strip()
                if not stripped:
                    self.pending_blank.append(number)
                    continue
                self._report_blank_lines()
                self.n_examples += 1
                self.exact_hashes.append(hash(stripped))
                obj = self.parse(number, raw.rstrip(b"\r\n"))
                fmt = self.check(number, obj) if obj is not None else None
                if obj is None or fmt is None:
                    self.near_hashes.append(0)
                    self.hash_lines.append(number)
                    continue
                self.valid += 1
                self.add_to_chunk(chunk, number, obj, fmt)
                if len(chunk.texts) >= CHUNK_TEXTS:
                    if in_flight is not None:
                        self.finish_chunk(in_flight[0], in_flight[1].result())
                    in_flight = (chunk, pool.submit(encode_lengths, self.encoding, chunk.texts))
                    chunk = _Chunk()
            if in_flight is not None:
                self.finish_chunk(in_flight[0], in_flight[1].result())
        if chunk.lines:
            self.finish_chunk(chunk, encode_lengths(self.encoding, chunk.texts))
        return self.report()

    def _report_blank_lines(self) -> None:
        for blank in self.pending_blank:
            self.errors.add(blank, "blank_line", "empty line between examples. Remove it (only trailing blank lines are allowed).")
        self.pending_blank.clear()

    def _duplicates(self) -> tuple[int, int]:
        exact = np.frombuffer(self.exact_hashes, dtype=np.int64)
        near = np.frombuffer(self.near_hashes, dtype=np.int64)
        lines = np.frombuffer(self.hash_lines, dtype=np.uint32)
        repeat, original = _repeats(exact)
        for index, first in zip(repeat.tolist(), original.tolist()):
            self.warnings.add(int(lines[index]), "duplicate_example",
                              f"exact duplicate of line {int(lines[first])}. Remove it: duplicates over-weight an example.")
        repeat, original = _repeats(near)
        keep = (near[repeat] != 0) & (exact[repeat] != exact[original])  # 0: invalid example; equal: exact dup
        for index, first in zip(repeat[keep].tolist(), original[keep].tolist()):
            self.warnings.add(int(lines[index]), "near_duplicate_example",
                              f"near-duplicate of line {int(lines[first])} (same text up to case, spacing and punctuation).")
        return self.warnings.counts["duplicate_example"], self.warnings.counts["near_duplicate_example"]

    def report(self) -> ValidationReport:
        if self.n_examples == 0:
            self.errors.add(None, "empty_file", "the file has no examples. Each line should hold one JSON example.")
        elif self.n_examples < self.min_examples:
            self.errors.add(None, "too_few_examples", f"{self.n_examples} examples; OpenAI requires at least {self.min_examples} in a training file. Add more examples (50-100 good ones is a sensible start).")
        n_exact, n_near = self._duplicates()
        if self.missing_system:
            self.warnings.add(None, "missing_system_message", f"{self.missing_system} of {self.valid} valid examples have no system message.")
        if self.missing_user:
            self.warnings.add(None, "missing_user_message", f"{self.missing_user} of {self.valid} valid examples have no user message.")
        stats = {
            "encoding": self.encoding.name,
            "valid_examples": self.valid,
            "missing_system": self.missing_system,
            "missing_user": self.missing_user,
            "messages_per_example": _histogram_summary(self.messages_hist),
            "total_tokens_per_example": _histogram_summary(self.total_hist),
            "assistant_tokens_per_example": _histogram_summary(self.assistant_hist),
            "token_limit_per_example": self.limit,
            "over_token_limit": self.over_limit,
            "billing_tokens_per_epoch": self.billing_tokens,
            "exact_duplicates": n_exact,
            "near_duplicates": n_near,
            "error_count": self.errors.total(),
            "warning_count": self.warnings.total(),
            "error_counts": dict(self.errors.counts),
            "warning_counts": dict(self.warnings.counts),
        }
        cost: dict[str, Any]
        try:
            estimate = estimate_training_cost(self.model, self.billing_tokens, self.valid, self.n_epochs) if self.valid else None
            cost = estimate.as_dict() if estimate else {"model": self.model, "cost_usd": None, "note": "no valid examples"}
        except ValueError as exc:
            cost = {"model": self.model, "cost_usd": None, "note": str(exc)}
        errors = sorted(self.errors.kept, key=_problem_order)
        warnings = sorted(self.warnings.kept, key=_problem_order)
        return ValidationReport(str(self.path), self.model, self.format, self.n_examples, errors, warnings,
                                self.total_tokens, stats, cost,
                                {"total_tokens": dict(self.total_hist), "assistant_tokens": dict(self.assistant_hist),
                                 "messages": dict(self.messages_hist)})


def _repeats(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of values seen before, and of the first occurrence of each (stable: file order)."""
    if len(hashes) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    same = ordered[1:] == ordered[:-1]
    starts = np.flatnonzero(np.r_[True, ~same])
    positions = np.flatnonzero(same) + 1
    group_start = starts[np.searchsorted(starts, positions, side="right") - 1]
    return order[positions], order[group_start]


def _problem_order(problem: Problem) -> tuple[int, int]:
    return (0, 0) if problem.line is None else (1, problem.line)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def validate_file(path: str | Path, model: str | None = None, *, min_examples: int = MIN_EXAMPLES,
                  n_epochs: int | Literal["auto"] = "auto") -> ValidationReport:
    """Validate a fine-tuning JSONL file for ``model`` (default: the course's default model).

    ``min_examples`` is OpenAI's minimum for a training file; a validation file needs only one. The cost
    estimate is for ``n_epochs`` ("auto": OpenAI's rule for the file's size).

    Raises ``FileNotFoundError``/``IsADirectoryError`` for a path that is not a file and ``ValueError``
    for an unknown model; everything wrong *inside* the file is reported, not raised.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the path of a .jsonl file.")
    if n_epochs != "auto" and not (isinstance(n_epochs, int) and 1 <= n_epochs <= 50):
        raise ValueError(f"n_epochs must be \"auto\" or a whole number from 1 to 50, got {n_epochs!r}.")
    return _Validator(path, model or default_model(), min_examples, n_epochs).run()
