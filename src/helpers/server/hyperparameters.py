"""A job's hyperparameters: what a request may ask for (each a number in its range, or "auto"), and what "auto"
becomes when the job runs and its training file's size is known."""
from __future__ import annotations

from typing import Any, Literal

from helpers.pricing.costs import auto_epochs
from helpers.server.errors import problem
from helpers.server.methods import METHODS


def is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def is_whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int)


#: ``learning_rate_multiplier="auto"``: the LoRA learning rate is training.BASE_LEARNING_RATE (2e-3) times the method's
#: ``auto_lr_multiplier`` (measured for each: ``helpers.server.methods``), for a model of REFERENCE_WIDTH (SmolLM2-135M's
#: hidden size). A wider model takes a proportionally smaller step: "auto" is scaled by REFERENCE_WIDTH / hidden size (1/width, as
#: muP prescribes for hidden weights). Measured (benchmarks/RESULTS.md, "LoRA learning rate and width"): the best rate
#: was 4e-3 at width 576 and 1.6e-2 at width 128 (1/width predicts 1.8e-2); a 2,048-wide model gets 1.1e-3.
REFERENCE_WIDTH = 576


def auto_batch_size(n_examples: int) -> int:
    """Local rule for ``batch_size="auto"``: 4, fewer for a very small file (at least 8 steps per epoch).
    LoRA learns best from small batches; the sweep in benchmarks/RESULTS.md chose 4 for the course data."""
    return max(1, min(4, n_examples // 8))


HYPERPARAMETER_RANGES: dict[str, tuple[type, float, float]] = {
    "n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": (float, 1e-4, 10), "beta": (float, 1e-4, 2),
    # reinforcement's: answers sampled per prompt scale with compute_multiplier (4 at 1: methods.reinforcement.GROUP);
    # every eval_interval steps, eval_samples answers to each validation prompt are graded
    "compute_multiplier": (float, 0.5, 4), "eval_interval": (int, 1, 1000), "eval_samples": (int, 1, 16)}


def hyperparameter(value: Any, name: str) -> int | float | Literal["auto"]:
    """``"auto"`` (or absent), or a number in the hyperparameter's range."""
    kind, low, high = HYPERPARAMETER_RANGES[name]
    if value is None or value == "auto":
        return "auto"
    if not is_number(value) or (kind is int and not float(value).is_integer()):
        raise problem(f"'{name}' must be \"auto\" or a {'whole number' if kind is int else 'number'}, got {value!r}.", name)
    if not low <= value <= high:
        raise problem(f"'{name}' must be between {low:g} and {high:g}, got {value}.", name)
    return kind(value)


COMMON = ("n_epochs", "batch_size", "learning_rate_multiplier")  # every method's; a method declares its own beyond them


def hyperparameters(raw: Any, method: str) -> dict[str, Any]:
    """A ``method`` job's hyperparameters, each resolved to a value or "auto" (the method's own too: DPO's ``beta``)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise problem("'hyperparameters' must be an object.", "hyperparameters")
    fixed = METHODS[method].fixed_hyperparameters
    known = {*COMMON, *METHODS[method].own_hyperparameters}
    unknown = set(raw) - known - set(fixed)
    if unknown:
        raise problem(f"Unknown hyperparameter(s) {sorted(unknown)} for a {method} job; known: {sorted(known | set(fixed))}.", "hyperparameters")
    for name, (value, why) in fixed.items():
        if raw.get(name) not in (None, value):
            raise problem(f"'{name}' can only be {value!r} on the local backend ({why}), got {raw[name]!r}.", name)
    resolved = {name: hyperparameter(raw.get(name), name) for name in sorted(known, key=list(HYPERPARAMETER_RANGES).index)}
    return {**resolved, **{name: value for name, (value, _) in fixed.items()}}


def auto_lr_multiplier(kind: str, width: int = REFERENCE_WIDTH) -> float:
    """``learning_rate_multiplier="auto"`` for a ``kind`` job on a model whose hidden size is ``width``."""
    return float(f"{METHODS[kind].auto_lr_multiplier * REFERENCE_WIDTH / width:.3g}")


def resolve_auto(kind: str, requested: dict[str, Any], n_examples: int, width: int = REFERENCE_WIDTH) -> dict[str, Any]:
    """A ``kind`` job's ``requested`` hyperparameters with each "auto" resolved for a training file of ``n_examples``
    and a model of hidden size ``width``: epochs by OpenAI's rule, batch size and learning rate by the local rules
    above, the method's own by its "auto" values (DPO's beta 0.1)."""
    resolved = {
        "n_epochs": auto_epochs(n_examples) if requested.get("n_epochs", "auto") == "auto" else requested["n_epochs"],
        "batch_size": auto_batch_size(n_examples) if requested.get("batch_size", "auto") == "auto" else requested["batch_size"],
        "learning_rate_multiplier": auto_lr_multiplier(kind, width) if requested.get("learning_rate_multiplier", "auto") == "auto" else requested["learning_rate_multiplier"],
    }
    for name, auto in METHODS[kind].own_hyperparameters.items():
        resolved[name] = auto if requested.get(name, "auto") == "auto" else requested[name]
    for name, (value, _) in METHODS[kind].fixed_hyperparameters.items():
        resolved[name] = value
    return resolved
