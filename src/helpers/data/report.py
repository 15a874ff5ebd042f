"""What the validator found in a file: its problems (each with a line, a stable code from ``chat_format`` and a
message) and the report: the verdict, token statistics and what training on it would cost."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from helpers.paths import shown


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem found in the file: 1-based ``line`` (None for the whole file), ``code``, ``message``."""

    line: int | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code, "message": self.message}

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: [{self.code}] {self.message}"


@dataclass
class ValidationReport:
    """What :func:`validate_file` found. ``ok`` is True when there are no errors (warnings allowed)."""

    path: str
    model: str
    format: str | None
    n_examples: int
    errors: list[Problem]
    warnings: list[Problem]
    total_tokens: int
    stats: dict[str, Any]
    cost: dict[str, Any]
    #: token counts per example as {value: how many examples}, for plots (not in the JSON form)
    histograms: dict[str, dict[int, int]] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"ok": self.ok, "path": self.path, "model": self.model, "format": self.format,
                "n_examples": self.n_examples, "errors": [p.as_dict() for p in self.errors],
                "warnings": [p.as_dict() for p in self.warnings], "total_tokens": self.total_tokens,
                "stats": self.stats, "cost": self.cost}

    def problems_frame(self):
        """Errors then warnings as a pandas DataFrame (severity, line, code, message)."""
        import pandas as pd

        rows = [{"severity": "error", **p.as_dict()} for p in self.errors]
        rows += [{"severity": "warning", **p.as_dict()} for p in self.warnings]
        return pd.DataFrame(rows, columns=["severity", "line", "code", "message"])

    def summary(self) -> str:
        """A few lines for people: the verdict, the counts, and what to fix first."""
        verdict = "OK" if self.ok else "NOT READY"
        s = self.stats
        lines = [f"{shown(self.path)}: {verdict} - {self.n_examples} examples ({self.format or 'unknown format'}), "
                 f"{s['error_count']} errors, {s['warning_count']} warnings"]
        if s.get("valid_examples"):
            t = s["total_tokens_per_example"]
            lines.append(f"tokens ({s['encoding']}): {self.total_tokens:,} in all; per example min {t['min']}, "
                         f"median {t['median']:g}, p95 {t['p95']:g}, max {t['max']}")
        if self.cost.get("cost_usd") is not None:
            c = self.cost
            lines.append(f"training {c['model']}: {c['n_epochs']} epochs x {c['billing_tokens_per_epoch']:,} tokens "
                         f"= {c['trained_tokens']:,} trained tokens ~ ${c['cost_usd']:.2f} (prices as of {c['prices_as_of']})")
        elif self.cost.get("note"):
            lines.append(f"cost: {self.cost['note']}")
        for problem in self.errors[:20]:
            lines.append(f"  error   {problem}")
        if s["error_count"] > 20:
            lines.append(f"  ... {s['error_count'] - 20} more errors (use --json for all reported ones)")
        for problem in self.warnings[:10]:
            lines.append(f"  warning {problem}")
        if s["warning_count"] > 10:
            lines.append(f"  ... {s['warning_count'] - 10} more warnings")
        return "\n".join(lines)
