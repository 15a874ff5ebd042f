"""Epochs, learning rates and the shape of a fit (notebook 06): each job's whole-file validation loss per epoch,
each kept checkpoint's held-out accuracy, and sentences that say which runs underfit, fit or memorised."""
from __future__ import annotations

from typing import Any

import pandas as pd

from helpers.course import evaluation
from helpers.pricing.costs import (
    MAX_TARGET_EXAMPLES,
    MIN_TARGET_EXAMPLES,
    TARGET_EPOCHS,
    auto_epochs,
    estimate_training_cost,
    has_openai_price,
    resolve_epochs,
)

#: The run with the service's defaults, the one the others are compared with.
AUTO_RUN = "auto epochs"


def excessive_run(excessive_epochs: int) -> str:
    return f"{excessive_epochs} epochs"


def runs(excessive_epochs: int, multipliers: list[float]) -> dict[str, dict[str, Any]]:
    """Notebook 06's runs as ``{name: hyperparameters}``: "auto" epochs, ``excessive_epochs``, and "auto" epochs with
    each learning-rate multiplier. (A 1-epoch run was dropped: it is the first point of every other curve.)"""
    if not isinstance(excessive_epochs, int) or excessive_epochs <= TARGET_EPOCHS:
        raise ValueError(f"EXCESSIVE_EPOCHS must be a whole number above {TARGET_EPOCHS} (OpenAI's usual auto), got {excessive_epochs!r}.")
    if len(set(multipliers)) != len(multipliers) or not all(isinstance(m, (int, float)) and 0 < m <= 10 for m in multipliers):
        raise ValueError(f"LEARNING_RATE_MULTIPLIERS must be different numbers above 0 and at most 10, got {multipliers!r}.")
    out: dict[str, dict[str, Any]] = {AUTO_RUN: {"n_epochs": "auto"}, excessive_run(excessive_epochs): {"n_epochs": excessive_epochs}}
    for m in multipliers:
        out[f"auto epochs, multiplier {m:g}"] = {"n_epochs": "auto", "learning_rate_multiplier": m}
    return out


def price_table(train, runs: dict[str, dict[str, Any]], model: str) -> pd.DataFrame:
    """Each run's epochs and its training price on OpenAI for the file ``train`` (validated once)."""
    from helpers.data.validate import validate_file

    report = validate_file(train, model=model)
    if not report.ok:
        raise ValueError(report.summary())
    rows = {}
    per_epoch = report.stats["billing_tokens_per_epoch"]
    for name, hyper in runs.items():
        epochs = resolve_epochs(hyper["n_epochs"], report.n_examples)
        usd = estimate_training_cost(model, per_epoch, report.n_examples, epochs).cost_usd if has_openai_price(model) else None
        rows[name] = {"examples": report.n_examples, "epochs": epochs, "trained tokens": per_epoch * epochs, "USD on OpenAI": usd}
    return pd.DataFrame.from_dict(rows, orient="index")


def epoch_losses(client, job_id: str) -> pd.DataFrame:
    """One row per epoch: the step it ended on, the mean training loss over its steps, and the whole validation
    file's loss and token accuracy at its end. Read from the job's metrics events (every epoch, also those whose
    checkpoint is no longer kept)."""
    steps = [event.data for event in client.fine_tuning.jobs.list_events(job_id, limit=100)
             if event.type == "metrics" and isinstance(event.data, dict) and "step" in event.data]
    frame = pd.DataFrame(steps).drop_duplicates("step").sort_values("step").reset_index(drop=True)
    if "full_valid_loss" not in frame:
        return pd.DataFrame(columns=["epoch", "step", "train_loss", "full_valid_loss", "full_valid_mean_token_accuracy"])
    ends = frame.index[frame["full_valid_loss"].notna()].tolist()
    rows, start = [], 0
    for epoch, end in enumerate(ends, start=1):
        rows.append({"epoch": epoch, "step": int(frame.loc[end, "step"]), "train_loss": float(frame.loc[start:end, "train_loss"].mean()),
                     "full_valid_loss": float(frame.loc[end, "full_valid_loss"]),
                     "full_valid_mean_token_accuracy": float(frame.loc[end, "full_valid_mean_token_accuracy"])})
        start = end + 1
    return pd.DataFrame(rows)


def checkpoint_models(client, job: Any) -> dict[int, str]:
    """``{epoch: model}`` for the job's kept checkpoints (OpenAI keeps the last three) and its final model."""
    steps_per_epoch = None
    kept = sorted(client.fine_tuning.jobs.checkpoints.list(job.id).data, key=lambda c: c.step_number)
    if kept:
        steps_per_epoch = kept[-1].step_number // job.hyperparameters.n_epochs
    models = {c.step_number // steps_per_epoch: c.fine_tuned_model_checkpoint for c in kept} if steps_per_epoch else {}
    models[job.hyperparameters.n_epochs] = job.fine_tuned_model
    return dict(sorted(models.items()))


def checkpoint_accuracy(client, jobs: dict[str, Any], test: list[dict], *, every_checkpoint: tuple[str, ...] | None = None,
                        max_tokens: int = 32) -> pd.DataFrame:
    """Held-out code accuracy (with its 95% interval) of the kept checkpoints of the jobs named in ``every_checkpoint``
    (all jobs when None) and of the final model of the others: one row each."""
    rows = []
    for name, job in jobs.items():
        models = checkpoint_models(client, job)
        if every_checkpoint is not None and name not in every_checkpoint:
            models = {max(models): models[max(models)]}
        for epoch, model in models.items():
            results = evaluation.evaluate(client, model, test, max_tokens=max_tokens, concurrency=16)
            accuracy, low, high = evaluation.share_with_interval(results["code_ok"])
            rows.append({"run": name, "epoch": epoch, "code_accuracy": accuracy,
                         "ci_low": low, "ci_high": high, "format_compliance": float(results["format_ok"].mean()), "model": model})
    return pd.DataFrame(rows)


def plot_fits(losses: dict[str, pd.DataFrame], accuracy: pd.DataFrame):
    """Left: whole-file validation loss per epoch, one line per run (training loss dotted). Right: held-out code
    accuracy per kept checkpoint."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, frame) in enumerate(losses.items()):
        colour = f"C{i}"
        left.plot(frame["epoch"], frame["full_valid_loss"], "o-", color=colour, label=name)
        left.plot(frame["epoch"], frame["train_loss"], ":", color=colour, alpha=0.6)
        runs = accuracy[accuracy["run"] == name]
        right.plot(runs["epoch"], runs["code_accuracy"], "o-", color=colour, label=name)
    left.set(xlabel="epoch", ylabel="loss", title="Validation loss, whole file (training loss dotted)")
    right.set(xlabel="epoch", ylabel="code accuracy", title="Held-out code accuracy per checkpoint", ylim=(0, 1.02))
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    return figure


#: An epoch "still improves" validation loss when it lowers it by at least this share and this much.
STILL_FALLING = (0.10, 0.02)
#: Validation loss has "turned" when it ended above its lowest point by more than this share and this much (at losses
#: near 0.04, as 06's long run reaches, a 10% rise is 0.004: noise between epochs, not memorising).
TURNED = (0.10, 0.02)
#: A run "broke" when fewer than this share of its final answers are in the format (the step threw away what the
#: base model and the first steps had).
BROKEN_FORMAT = 0.5
#: Over a run's last third (3 epochs or more): validation loss moving less than this share while training loss falls
#: by more than the second share is memorising: the training examples are learned by heart, new requests gain nothing.
PLATEAU = (0.10, 0.50)
#: ... while validation loss stays above this: near 0.04 (06's long run at the defaults) the validation answers are
#: predicted almost token for token, held-out accuracy was still rising, and a flat curve there is a fit.
PLATEAU_FLOOR = 0.1


def shape(frame: pd.DataFrame) -> str:
    """The curve of a run's whole-file validation loss, one point per epoch:

    * ``single``: one epoch, no trend;
    * ``diverged``: it ended above where it started (the step was too large);
    * ``turned``: it rose clearly after its lowest point (by :data:`TURNED`: memorising, the textbook way);
    * ``plateau``: over the last third of the run it barely moved while training loss kept falling (memorising: the
      extra epochs learned the training examples, not the task);
    * ``falling``: the last epoch still lowered it clearly (under-trained: more epochs would help);
    * ``settled``: otherwise (a fit: it flattened at its lowest)."""
    valid, train = frame["full_valid_loss"].tolist(), frame["train_loss"].tolist()
    if len(valid) == 1:
        return "single"
    if valid[-1] > valid[0]:
        return "diverged"
    if valid[-1] > min(valid) * (1 + TURNED[0]) and valid[-1] - min(valid) > TURNED[1]:
        return "turned"
    tail = max(3, len(valid) // 3)
    if (len(valid) >= 6 and abs(valid[-tail] - valid[-1]) < PLATEAU[0] * valid[-tail] and train[-1] < (1 - PLATEAU[1]) * train[-tail]
            and valid[-1] > PLATEAU_FLOOR):
        return "plateau"
    drop = valid[-2] - valid[-1]
    return "falling" if drop >= STILL_FALLING[0] * valid[-2] and drop >= STILL_FALLING[1] else "settled"


def fit_table(losses: dict[str, pd.DataFrame], accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per run: its epochs, the first, lowest (and its epoch) and last validation loss, the last training loss, the
    curve's shape, the best and last checkpoint accuracy (the last with its 95% interval), and the last model's format
    compliance."""
    rows = {}
    for name, frame in losses.items():
        runs = accuracy[accuracy["run"] == name].sort_values("epoch")
        best = frame.loc[frame["full_valid_loss"].idxmin()]
        rows[name] = {"epochs": int(frame["epoch"].max()), "first validation loss": float(frame["full_valid_loss"].iloc[0]),
                      "lowest validation loss": float(best["full_valid_loss"]),
                      "at epoch": int(best["epoch"]), "last validation loss": float(frame["full_valid_loss"].iloc[-1]),
                      "last training loss": float(frame["train_loss"].iloc[-1]), "curve": shape(frame),
                      "best checkpoint accuracy": float(runs["code_accuracy"].max()),
                      "last checkpoint accuracy": float(runs["code_accuracy"].iloc[-1]),
                      "last accuracy ci low": float(runs["ci_low"].iloc[-1]), "last accuracy ci high": float(runs["ci_high"].iloc[-1]),
                      "last format compliance": float(runs["format_compliance"].iloc[-1]) if "format_compliance" in runs else None}
    return pd.DataFrame.from_dict(rows, orient="index")


#: Two final validation losses closer than this share of the baseline's are "about the same": at course size (all 37
#: codes) multiplier 4 ended at 0.431 against auto's 0.438 (1.6% lower) and was less accurate (0.083 against 0.167)
SAME_LOSS = 0.05


def _broke(row: pd.Series) -> bool:
    """A run whose model lost the answer format: its step was too large."""
    return row.get("last format compliance") is not None and row["last format compliance"] < BROKEN_FORMAT


def fit_findings(table: pd.DataFrame, baseline: str, chance: float | None = None) -> list[str]:
    """What 06's table shows, in sentences computed from it. ``baseline`` is the run with the auto settings; ``chance``
    the accuracy of a model that guesses among the codes trained on (1 / their number)."""
    lines = []
    base = table.loc[baseline]
    for name, row in table.iterrows():
        trail = (f"validation loss lowest at epoch {row['at epoch']} ({row['lowest validation loss']:.3f}), "
                 f"{row['last validation loss']:.3f} at its last; held-out accuracy {row['last checkpoint accuracy']:.3f} "
                 f"at the end (best checkpoint {row['best checkpoint accuracy']:.3f})")
        if chance is not None and row["last checkpoint accuracy"] <= 1.5 * chance:
            level = "below" if row["last checkpoint accuracy"] < chance / 2 else "about"
            trail += f", {level} chance (guessing among the codes scores {chance:.3f})"
        broke = _broke(row)
        if broke:
            verdict = (f"the step was too large: validation loss began at {row['first validation loss']:.2f}, "
                       f"{row['first validation loss'] / base['first validation loss']:.0f} times the first epoch of {baseline}, "
                       f"and the model lost the answer format ({row['last format compliance']:.0%} of its answers parse): "
                       "lower the multiplier")
        else:
            verdict = {"single": "one point, no trend: compare its loss with the other runs' first epoch",
                       "falling": "still improving when it stopped: under-trained, more epochs would help",
                       "settled": "it flattened at its lowest: a fit",
                       "turned": (f"it began to memorise after epoch {row['at epoch']}: training loss went on down to "
                                  f"{row['last training loss']:.3f} while validation loss rose"),
                       "plateau": (f"memorising: over its last epochs training loss went on down to {row['last training loss']:.3f} "
                                   "while validation loss barely moved; those epochs learned the training examples, not the task"),
                       "diverged": "the step was too large: validation loss ended above where it started"}[row["curve"]]
        lines.append(f"{name}: {trail}. The curve: {verdict}.")
    best = table["lowest validation loss"].astype(float).idxmin()
    row = table.loc[best]
    at, epochs = int(row["at epoch"]), int(row["epochs"])
    extra = epochs - at
    kept = ("its checkpoint is among the last three a job keeps: call it by name (3.3's table lists it)" if extra < 3 else
            f"a job keeps only its last three checkpoints, so epoch {at}'s is gone: to use that point, train again with "
            f"n_epochs={at}")
    lines.append(f"The lowest validation loss of all runs: {row['lowest validation loss']:.3f}, at epoch {at} of {best}"
                 + (f"; its {extra} later epochs ({extra / epochs:.0%} of its training) did not lower it, and {kept}." if extra else "."))
    if not table["curve"].isin(["turned", "plateau"]).any():
        lines.append("No run memorised here: after its lowest point no run's validation loss rose by more than noise, and "
                     "held-out accuracy did not fall. With answers in one fixed form and a step that decays to zero, the "
                     "extra epochs cost time and money, not accuracy. The turn comes where the training file holds "
                     "something to learn by heart that new requests do not share: 07 trains on wrong labels.")
    for name, row in table.iterrows():
        if name == baseline or row["epochs"] != base["epochs"] or _broke(row):
            continue
        loss, base_loss = row["last validation loss"], base["last validation loss"]
        accuracy, base_accuracy = row["last checkpoint accuracy"], base["last checkpoint accuracy"]
        compared = f"({loss:.3f} against {base_loss:.3f})"
        if abs(loss - base_loss) <= SAME_LOSS * base_loss:
            lines.append(f"{name} trained as many epochs as {baseline} and ended at about the same validation loss {compared}, "
                         f"within {SAME_LOSS:.0%}: on this data the step size changed little.")
        elif loss < base_loss and accuracy < base_accuracy:
            lines.append(f"{name} ended at a lower validation loss than {baseline} {compared} but at a lower held-out accuracy "
                         f"({accuracy:.3f} against {base_accuracy:.3f}): the loss counts every token of the answer, the "
                         "accuracy only the code, so a lower loss alone does not make a better model.")
        elif loss < base_loss:
            lines.append(f"{name} trained as many epochs as {baseline} with a larger step and ended at a lower validation loss "
                         f"{compared}: a larger step learns faster, up to the size where it breaks the model.")
    better = [name for name, row in table.iterrows() if name != baseline and row["last checkpoint accuracy"] > base["last checkpoint accuracy"]]
    clear = [name for name in better if table.loc[name, "last accuracy ci low"] > base["last accuracy ci high"]]
    close = [name for name in better if name not in clear]
    said = ([f"{', '.join(clear)} ended more accurate, beyond both 95% intervals"] if clear else []) + \
           ([f"{', '.join(close)} ended higher by less than the 95% intervals can separate (the intervals overlap)"] if close else [])
    lines.append(f"Against {baseline} ({base['last checkpoint accuracy']:.3f}): "
                 + ("; ".join(said) + "." if said else "no other run ended more accurate."))
    return lines


def auto_epochs_table(sizes: list[int]) -> pd.DataFrame:
    """What OpenAI's ``n_epochs="auto"`` picks for files of these sizes, and the examples seen in all."""
    return pd.DataFrame({"examples": sizes, "auto epochs": [auto_epochs(n) for n in sizes],
                         "examples seen": [n * auto_epochs(n) for n in sizes]}).set_index("examples")


AUTO_RULE = (f"OpenAI's \"auto\" starts from {TARGET_EPOCHS} epochs and changes them only to keep examples x epochs between "
             f"{MIN_TARGET_EXAMPLES:,} and {MAX_TARGET_EXAMPLES:,}: more epochs for a tiny file, fewer for a huge one.")
