"""Costs from the dated price table in ``data/prices.json``: training, per query, break-even.

Every figure comes from that table; :func:`price_table` says when it was read and from where.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from helpers.paths import DATA_DIR
from helpers.pricing.catalogue import base_model_name, is_open_model

if TYPE_CHECKING:
    import pandas as pd

MILLION = 1_000_000
# OpenAI's "auto" epochs rule (as in the Cookbook's data-prep notebook).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


@lru_cache(maxsize=1)
def price_table() -> dict:
    """The raw table, with ``as_of``, ``sources`` and the wind-down ``notice``."""
    return json.loads((DATA_DIR / "prices.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens for one model; ``training`` is None for models billed per hour or not tunable."""

    model: str
    fine_tuned: bool
    input: float
    cached_input: float
    output: float
    training: float | None
    training_per_hour: float | None
    source: str


class NoOpenAIPrice(ValueError):
    """An open model run on the user's own machine: OpenAI sells no such model, so there is no price to show."""


def has_openai_price(model: str) -> bool:
    """False for an open model (a local base model or a brought one), whose cost is the time of the machine it runs on."""
    return not is_open_model(model)


def prices(model: str, *, fine_tuned: bool | None = None) -> Prices:
    """Prices of a model. ``ft:`` names (or ``fine_tuned=True``) use the fine-tuned row. An open model has none
    (:class:`NoOpenAIPrice`): the course shows no price rather than one it would invent."""
    tuned = model.startswith("ft:") if fine_tuned is None else fine_tuned
    name = base_model_name(model)
    if is_open_model(name):
        raise NoOpenAIPrice(f"{name} is an open model run on your own machine: OpenAI has no price for it, so none is shown "
                            "(its cost is the time of the machine it runs on).")
    section = "fine_tuned" if tuned else "base"
    row = price_table()[section].get(name)
    if row is None:
        names = ", ".join(price_table()[section])
        kind = "fine-tuned" if tuned else "base"
        raise ValueError(f"No {kind} price for {model!r} in data/prices.json (as of {price_table()['as_of']}). Priced: {names}.")
    return Prices(name, tuned, row["input"], row["cached_input"], row["output"], row.get("training"), row.get("training_per_hour"), row["source"])


def prices_frame() -> pd.DataFrame:
    """The whole table as a DataFrame (one row per model and kind), for display."""
    import pandas as pd

    rows = []
    for section in ("fine_tuned", "base"):
        for name in price_table()[section]:
            p = prices(name, fine_tuned=section == "fine_tuned")
            rows.append({"model": name, "kind": "fine-tuned" if p.fine_tuned else "base", "training_per_1m": p.training,
                         "training_per_hour": p.training_per_hour, "input_per_1m": p.input,
                         "cached_input_per_1m": p.cached_input, "output_per_1m": p.output, "source": p.source})
    return pd.DataFrame(rows)


def auto_epochs(n_examples: int) -> int:
    """OpenAI's ``n_epochs="auto"``: 3, raised or lowered so examples x epochs stays in 100..25,000
    where possible, and always within 1..25. (The Cookbook floors the raise and can land under 100;
    we round up so the target is met.)"""
    if n_examples <= 0:
        raise ValueError("auto epochs needs at least one training example")
    epochs = TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n_examples))
    elif n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return epochs


def resolve_epochs(n_epochs: int | Literal["auto"], n_examples: int) -> int:
    return auto_epochs(n_examples) if n_epochs == "auto" else int(n_epochs)


@dataclass(frozen=True)
class TrainingEstimate:
    model: str
    n_examples: int
    n_epochs: int
    billing_tokens_per_epoch: int
    trained_tokens: int
    price_per_1m: float
    cost_usd: float
    prices_as_of: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def estimate_training_cost(model: str, billing_tokens_per_epoch: int, n_examples: int,
                           n_epochs: int | Literal["auto"] = "auto") -> TrainingEstimate:
    """Training cost: tokens per epoch (each example capped at the model's limit) x epochs x price."""
    p = prices(model, fine_tuned=True)
    if p.training is None:
        raise ValueError(f"{p.model} is billed per hour of training (${p.training_per_hour}/h), not per token.")
    epochs = resolve_epochs(n_epochs, n_examples)
    trained = billing_tokens_per_epoch * epochs
    return TrainingEstimate(p.model, n_examples, epochs, billing_tokens_per_epoch, trained, p.training,
                            trained * p.training / MILLION, price_table()["as_of"])


def training_cost(model: str, n_examples: int, tokens_per_example: float, n_epochs: int | Literal["auto"] = "auto") -> float:
    """Training cost in USD from averages (for sliders and what-if tables)."""
    return estimate_training_cost(model, round(n_examples * tokens_per_example), n_examples, n_epochs).cost_usd


def query_cost(model: str, input_tokens: float, output_tokens: float, *, cached_input_tokens: float = 0.0,
               fine_tuned: bool | None = None) -> float:
    """USD for one request: uncached input, cached input and output at the model's prices."""
    p = prices(model, fine_tuned=fine_tuned)
    fresh = input_tokens - cached_input_tokens
    return (fresh * p.input + cached_input_tokens * p.cached_input + output_tokens * p.output) / MILLION


@dataclass(frozen=True)
class Approach:
    """One way to serve a task: a model, tokens per query, and what it costs besides queries."""

    name: str
    model: str
    input_tokens: float
    output_tokens: float
    fine_tuned: bool = False
    one_off_usd: float = 0.0        # e.g. a training run, building an index
    monthly_fixed_usd: float = 0.0  # e.g. retraining amortised, hosting a vector store
    cached_fraction: float = 0.0    # share of input tokens billed at the cached price

    def per_query_usd(self) -> float:
        return query_cost(self.model, self.input_tokens, self.output_tokens,
                          cached_input_tokens=self.input_tokens * self.cached_fraction, fine_tuned=self.fine_tuned)

    def monthly_cost(self, queries_per_month: float, months: int = 12) -> float:
        """Monthly cost with one-off costs spread over ``months``."""
        return self.monthly_fixed_usd + self.one_off_usd / months + queries_per_month * self.per_query_usd()


def break_even_queries(a: Approach, b: Approach, months: int = 12) -> float | None:
    """Monthly query volume at which ``a`` and ``b`` cost the same, or None if they never cross."""
    fixed_a = a.monthly_fixed_usd + a.one_off_usd / months
    fixed_b = b.monthly_fixed_usd + b.one_off_usd / months
    slope = a.per_query_usd() - b.per_query_usd()
    if slope == 0:
        return None
    volume = (fixed_b - fixed_a) / slope
    return volume if volume > 0 else None


def compare_approaches(approaches: Iterable[Approach], volumes: Iterable[float], months: int = 12) -> pd.DataFrame:
    """Monthly cost of each approach at each volume (rows: volumes, columns: approaches)."""
    import pandas as pd

    approaches = list(approaches)
    volumes = list(volumes)
    return pd.DataFrame({a.name: [a.monthly_cost(v, months) for v in volumes] for a in approaches},
                        index=pd.Index(volumes, name="queries_per_month"))


def cheapest_approach(approaches: Iterable[Approach], queries_per_month: float, months: int = 12) -> Approach:
    return min(approaches, key=lambda a: a.monthly_cost(queries_per_month, months))
