"""Garbage in (notebook 07): labels that are well formed and wrong, padding that looks like data, and the audits
that find them.

* :func:`corrupt` gives a share of examples a wrong label in the right format, of two kinds: the code swapped
  for another course code (the description kept), and the whole answer of another procedure. By default the errors
  are systematic, as a person's are: a coder who confuses a procedure with another labels every example of it
  wrongly, so the wrong labels fill whole procedures (the model learns them); random errors are spread thin over
  every procedure (the model mostly outvotes them).
* :func:`pad` keeps the file's size but replaces a share of it with near-duplicates of the rest.
* :func:`audit` checks every label twice without a model: against the code table (does the description go with
  the code?) and against retrieval (is the labelled code among the codes retrieval finds for the request?).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from helpers.course.billing import format_answer, load_codes, parse_answer, same_description
from helpers.course.experiments import expected_code
from helpers.course.retrieval import retrieve

#: The two kinds of wrong label :func:`corrupt` writes.
SWAPPED_CODE, OTHER_PROCEDURE = "code swapped", "another procedure's answer"


def _answer(row: dict) -> str:
    return row["messages"][-1]["content"]


def _with_answer(row: dict, answer: str) -> dict:
    return {**row, "messages": [*row["messages"][:-1], {**row["messages"][-1], "content": answer}]}


def confusions(codes: list[str], seed: int) -> dict[str, str]:
    """Each code's "confused with" code: a fixed other code of ``codes`` (a derangement drawn with ``seed``), as a
    coder who mixes two codes up makes the same mistake every time."""
    if len(codes) < 2:
        raise ValueError("Corrupting labels needs examples of at least two codes.")
    shuffled = sorted(codes)
    random.Random(seed).shuffle(shuffled)
    return {code: shuffled[(i + 1) % len(shuffled)] for i, code in enumerate(shuffled)}


def corrupt(rows: list[dict], share: float, seed: int, systematic: bool = True) -> tuple[list[dict], dict[int, str]]:
    """A copy of ``rows`` where ``share`` of the labels are wrong in the right format: alternately the code swapped
    for another of the file's codes, and another procedure's whole answer.

    ``systematic``: the wrong labels fill whole procedures, taken in an order drawn with ``seed`` (the last one only
    partly, so that the share is exact), each always given its fixed confusion (:func:`confusions`). A smaller share's
    wrong rows are a subset of a larger share's. Otherwise: rows drawn at random, each given a random other code.
    Returns the rows and ``{index: kind}`` of the corrupted ones."""
    if not 0 <= share <= 1:
        raise ValueError(f"A corrupted share must be between 0 and 1, got {share}.")
    rng = random.Random(seed)
    table = {c.code: c for c in load_codes()}
    code_of = [expected_code(row) for row in rows]
    codes = sorted(set(code_of))
    confused = confusions(codes, seed)
    n_wrong = round(len(rows) * share)
    if systematic:
        order = rng.sample(codes, len(codes))
        chosen = sorted([i for code in order for i, c in enumerate(code_of) if c == code][:n_wrong])
    else:
        chosen = sorted(rng.sample(range(len(rows)), n_wrong))
    out, kinds = list(rows), {}
    for n, index in enumerate(chosen):
        code, description = parse_answer(_answer(rows[index]))
        other = confused[code] if systematic else rng.choice([c for c in codes if c != code])
        kind = SWAPPED_CODE if n % 2 == 0 else OTHER_PROCEDURE
        wrong = format_answer(other, description) if kind == SWAPPED_CODE else table[other].answer
        out[index], kinds[index] = _with_answer(rows[index], wrong), kind
    return out, kinds


def mislabelled_procedures(rows: list[dict], corrupted: dict[int, str]) -> list[str]:
    """The codes none of whose examples in ``rows`` kept its right label (``corrupted`` as :func:`corrupt` returns)."""
    codes: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        codes.setdefault(expected_code(row), []).append(i)
    return sorted(code for code, indices in codes.items() if all(i in corrupted for i in indices))


def _near_duplicate(text: str, rng: random.Random) -> str:
    """The same request up to case, spacing and punctuation: what a scraper or a copy-paste adds."""
    changes = [str.upper, str.lower, lambda t: "  ".join(t.split(" ")), lambda t: t.rstrip(".?!") + " ."]
    rng.shuffle(changes)
    return next(changed for change in changes if (changed := change(text)) != text)  # never an exact copy


def pad(rows: list[dict], share: float, seed: int) -> tuple[list[dict], int]:
    """A file of the same size where ``share`` of the examples are near-duplicates of the others (each copied
    row's request changed only in case, spacing or punctuation, its answer unchanged): a padded file looks as
    big and says less. Returns the rows and the number of distinct requests left."""
    if not 0 <= share < 1:
        raise ValueError(f"PADDED_SHARE must be at least 0 and below 1, got {share}.")
    rng = random.Random(seed)
    keep = sorted(rng.sample(range(len(rows)), len(rows) - round(len(rows) * share)))
    kept = [rows[i] for i in keep]
    copies = []
    for _ in range(len(rows) - len(kept)):
        source = rng.choice(kept)
        messages = [dict(m) for m in source["messages"]]
        user = next(m for m in messages if m["role"] == "user")
        user["content"] = _near_duplicate(user["content"], rng)
        copies.append({**source, "messages": messages})
    padded = kept + copies
    rng.shuffle(padded)
    return padded, len(kept)


def audit(rows: list[dict], k: int = 5) -> pd.DataFrame:
    """One row per example: its line, request and labelled code; ``table_ok`` (the label's description is the
    code table's for that code), ``retrieval_ok`` (the labelled code is among the ``k`` codes retrieval finds for
    the request) and ``flagged`` (either check failed)."""
    table = {c.code: c.description for c in load_codes()}
    out = []
    for line, row in enumerate(rows, start=1):
        request = next(m["content"] for m in row["messages"] if m["role"] == "user")
        parsed = parse_answer(_answer(row))
        code, description = parsed if parsed else (None, None)
        table_ok = code in table and same_description(description, table[code])
        retrieval_ok = code in {c.code for c in retrieve(request, k)}
        out.append({"line": line, "request": request, "label": _answer(row), "table_ok": table_ok,
                    "retrieval_ok": retrieval_ok, "flagged": not (table_ok and retrieval_ok)})
    return pd.DataFrame(out)


def audit_scores(audited: pd.DataFrame, corrupted: dict[int, str]) -> pd.DataFrame:
    """How well each check finds the corrupted rows: per check, rows flagged, corrupted rows found (of each kind),
    and clean rows flagged by mistake."""
    is_bad = audited.index.isin(list(corrupted))
    kinds = pd.Series({i: corrupted.get(i) for i in audited.index})
    rows = {}
    for check, flagged in (("code table", ~audited["table_ok"]), ("retrieval", ~audited["retrieval_ok"]), ("either", audited["flagged"])):
        rows[check] = {"flagged": int(flagged.sum()), "corrupted found": int((flagged & is_bad).sum()),
                       **{f"{kind}: found": int((flagged & (kinds == kind)).sum()) for kind in (SWAPPED_CODE, OTHER_PROCEDURE)},
                       "clean rows flagged": int((flagged & ~is_bad).sum())}
    out = pd.DataFrame(rows).T
    out.attrs.update(corrupted=int(is_bad.sum()), clean=int((~is_bad).sum()))
    return out


def _share_name(share: float) -> str:
    return f"{share:.0%} corrupted"


def variant_names(shares: list[float], padded_share: float) -> list[str]:
    """The names notebook 07 gives its training files, in order: one per corrupted share, then the padded one."""
    return [_share_name(s) for s in shares] + ([f"padded ({padded_share:.0%} near-duplicates)"] if padded_share else [])


def taught_wrong(variants: Variants, test: list[dict]) -> dict[str, dict[str, float]]:
    """Per corrupted file: how many procedures had every example labelled wrong, and the share of ``test`` (held-out
    requests) that belongs to them: what a model that learned its labels as given would get wrong."""
    test_codes = [expected_code(row) for row in test]
    out = {}
    for name, corrupted in variants.corrupted.items():
        wrong = mislabelled_procedures(variants.clean, corrupted)
        out[name] = {"procedures": len(wrong), "held_out_share": sum(c in wrong for c in test_codes) / max(len(test_codes), 1)}
    return out


def noise_findings(scores: dict[str, dict], shares: list[float], padded_share: float, distinct: int, n_examples: int,
                   systematic: bool = True, taught: dict[str, dict[str, float]] | None = None) -> list[str]:
    """What 07's table shows, in sentences computed from it: accuracy against the share of wrong labels, whether
    the intervals separate the runs, what the wholly mislabelled procedures predict (``taught``, from
    :func:`taught_wrong`), the format (unchanged), and the padded file."""
    names = variant_names(shares, padded_share)
    noisy = [(share, scores[name]) for share, name in zip(shares, names)]
    trail = "; ".join(f"{s['code_accuracy']:.3f} with {share:.0%} of the labels wrong" for share, s in noisy)
    lines = [f"Held-out code accuracy: {trail} ({noisy[0][1]['n']:.0f} requests each)."]
    (low_share, clean), (high_share, worst) = noisy[0], noisy[-1]
    drop = clean["code_accuracy"] - worst["code_accuracy"]
    apart = worst["code_accuracy_ci_high"] < clean["code_accuracy_ci_low"]
    if drop > 0:
        lines.append(f"Going from {low_share:.0%} to {high_share:.0%} wrong labels cost {drop:.3f} of accuracy "
                     f"({drop / max(high_share - low_share, 1e-9):.2f} per unit of wrong labels)"
                     + (", and the 95% intervals do not overlap: the drop is real." if apart else
                        ", but the 95% intervals overlap: on this many requests the drop is within the noise."))
    else:
        lines.append(f"With {high_share:.0%} of the labels wrong the model scored no worse ({worst['code_accuracy']:.3f} "
                     f"against {clean['code_accuracy']:.3f})"
                     + (": on this sample the wrong labels did not show." if systematic else
                        ": it learned each procedure's majority label. Random errors spread thin wash out; errors that "
                        "fill whole procedures (SYSTEMATIC = True) do not."))
    worst_taught = (taught or {}).get(names[len(shares) - 1], {})
    if systematic and worst_taught.get("procedures") and drop > 0:
        expected = clean["code_accuracy"] * worst_taught["held_out_share"]
        lines.append(f"The {high_share:.0%} file labelled every example of {worst_taught['procedures']:.0f} procedures wrong; "
                     f"their requests are {worst_taught['held_out_share']:.0%} of the held-out set, so a model that learned "
                     f"its labels as given would lose about {expected:.3f} ({clean['code_accuracy']:.3f} x "
                     f"{worst_taught['held_out_share']:.3f}). It lost {drop:.3f}: "
                     + ("it learned the wrong labels as faithfully as the right ones." if drop >= 0.5 * expected else
                        "less than that, so it did not learn all of them."))
    formats = ", ".join(f"{s['format_compliance']:.2f}" for _, s in noisy)
    lines.append(f"Format compliance: {formats}. Every wrong label was well formed, so the models learned the format "
                 "either way: the damage shows only when the facts are scored.")
    if padded_share:
        padded = scores[names[-1]]
        verdict = ("lower than" if padded["code_accuracy"] < clean["code_accuracy"] else
                   "the same as" if padded["code_accuracy"] == clean["code_accuracy"] else "higher than")
        overlap = not (padded["code_accuracy_ci_high"] < clean["code_accuracy_ci_low"] or clean["code_accuracy_ci_high"] < padded["code_accuracy_ci_low"])
        lines.append(f"The padded file has the same {n_examples} examples, so it costs the same to train, but only {distinct} "
                     f"distinct requests: it scored {padded['code_accuracy']:.3f}, {verdict} the clean file's "
                     f"{clean['code_accuracy']:.3f}" + (" (the intervals overlap: no difference this sample can show). " if overlap else ". ")
                     + "Its copies bought no new phrasing; the validator warns about each of them (3.2).")
    return lines


def audit_findings(scores: pd.DataFrame) -> list[str]:
    """What 07's audit table shows: how many corrupted rows each check found, and at what cost in clean rows."""
    bad, clean = scores.attrs["corrupted"], scores.attrs["clean"]
    table, retrieval, either = (scores.loc[name] for name in ("code table", "retrieval", "either"))
    return [
        f"The code-table check found {table['corrupted found']} of the {bad} corrupted rows: {table[f'{SWAPPED_CODE}: found']} "
        f"with the code swapped, {table[f'{OTHER_PROCEDURE}: found']} carrying another procedure's whole answer (those agree "
        f"with the table). It flagged {table['clean rows flagged']} of the {clean} clean rows.",
        f"The retrieval check found {retrieval['corrupted found']} of them ({retrieval[f'{OTHER_PROCEDURE}: found']} of the other "
        f"procedures' answers), and flagged {retrieval['clean rows flagged']} clean rows: retrieval misses some right codes too, "
        "so its flags are rows to read, not rows to delete.",
        f"Together they flagged {either['flagged']} rows, {either['corrupted found']} of them corrupted "
        f"({either['corrupted found'] / max(bad, 1):.0%} of the corrupted rows found), for {either['clean rows flagged']} "
        "clean rows read by mistake.",
    ]


@dataclass
class Variants:
    """Notebook 07's training sets: ``rows`` per variant name, the corrupted rows of each (``{index: kind}``), how
    many distinct requests the padded file kept (the clean size when there is none), and the clean rows."""
    rows: dict[str, list[dict]]
    corrupted: dict[str, dict[int, str]]
    distinct: int
    clean: list[dict]

    @property
    def worst(self) -> str:
        """The variant with the most corrupted labels."""
        return max(self.corrupted, key=lambda name: len(self.corrupted[name]))


def make_variants(clean: list[dict], shares: list[float], padded_share: float, seed: int, systematic: bool = True) -> Variants:
    """One corrupted copy of ``clean`` per share (:func:`corrupt`), then the padded one (:func:`pad`) if asked."""
    if len(shares) < 2 or list(shares) != sorted(set(shares)):
        raise ValueError(f"CORRUPTED_SHARES must hold at least two different shares in rising order, the first the "
                         f"baseline (for example [0.0, 0.15, 0.4]); got {shares}.")
    names = variant_names(shares, padded_share)
    rows, corrupted, distinct = {}, {}, len(clean)
    for share, name in zip(shares, names):
        rows[name], corrupted[name] = corrupt(clean, share, seed, systematic)
    if padded_share:
        rows[names[-1]], distinct = pad(clean, padded_share, seed)
    return Variants(rows, corrupted, distinct, clean)


def corrupted_examples(clean: list[dict], variants: Variants, n: int = 2) -> pd.DataFrame:
    """The first ``n`` corrupted rows of the worst variant, with their right label beside the wrong one."""
    name = variants.worst
    shown = sorted(variants.corrupted[name])[:n]
    return pd.DataFrame({"request": [clean[i]["messages"][-2]["content"] for i in shown],
                         "right label": [_answer(clean[i]) for i in shown],
                         f"label in the {name} file": [_answer(variants.rows[name][i]) for i in shown],
                         "kind": [variants.corrupted[name][i] for i in shown]})
