"""Patient data in training files (notebook 10): named checks for identifiers a billing note may carry, and a scrubber
that replaces them with placeholders before a file leaves your machine.

The checks find identifiers that have a shape (dates, phone numbers, e-mail addresses, record and social security
numbers, ages over 89, names after a title). Free-text names without a title need a named-entity model or a person:
these checks reduce the risk, they do not certify a file as de-identified.
"""
from __future__ import annotations

import re

import pandas as pd

#: Name of each check -> (pattern, placeholder). Ordered: the scrubber applies them in this order.
CHECKS: dict[str, tuple[re.Pattern[str], str]] = {
    "e-mail address": (re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"), "[EMAIL]"),
    "social security number": (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[SSN]"),
    "record number": (re.compile(r"(\b(?:MRN|medical record|acct|account|member id)\s*(?:no\.?|number|#)?\s*[:#]?\s*)[A-Z0-9][A-Z0-9-]{3,}\b",
                                 re.IGNORECASE), r"\g<1>[RECORD]"),
    "phone number": (re.compile(r"(?:\+1[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"), "[PHONE]"),
    "date": (re.compile(r"\b(?:\d{1,2}[/-]\d{1,2}[/-](?:\d{4}|\d{2})|\d{4}-\d{2}-\d{2}|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2},? \d{4})\b",
                         re.IGNORECASE), "[DATE]"),
    "age over 89": (re.compile(r"\b(?:9\d|1[01]\d)\s*(?:yo\b|y/o|-?year|yrs?\b)", re.IGNORECASE), "[AGE 90+]"),
    "name after a title": (re.compile(r"(\b(?:Mr|Mrs|Ms|Miss|Dr|[Pp]atient name|[Pp]t name|[Nn]ame)\b\.?:?\s+)[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?"),
                           r"\g<1>[NAME]"),
}


def _texts(row: dict) -> list[str]:
    return [m["content"] for m in row.get("messages", []) if isinstance(m.get("content"), str)]


def scan(rows: list[dict]) -> pd.DataFrame:
    """Every identifier the checks find in the examples' messages: line, check, and the text found."""
    found = [{"line": line, "check": name, "found": match.group(0)}
             for line, row in enumerate(rows, start=1) for text in _texts(row)
             for name, (pattern, _) in CHECKS.items() for match in pattern.finditer(text)]
    return pd.DataFrame(found, columns=["line", "check", "found"])


def scrub(text: str) -> str:
    """``text`` with every identifier the checks find replaced by its placeholder."""
    for pattern, placeholder in CHECKS.values():
        text = pattern.sub(placeholder, text)
    return text


def scrub_rows(rows: list[dict]) -> list[dict]:
    """The examples with every message's text scrubbed."""
    return [{**row, "messages": [{**m, "content": scrub(m["content"])} if isinstance(m.get("content"), str) else m
                                 for m in row["messages"]]} for row in rows]


def privacy_findings(course_scan: pd.DataFrame, n_course: int, notes_scan: pd.DataFrame, n_notes: int, after: pd.DataFrame) -> list[str]:
    """What 10's scans show, in sentences computed from them."""
    lines = [f"The course's training file: {len(course_scan)} identifiers found in {n_course} examples"
             + (": its requests carry ages and sex only, with no age over 89." if course_scan.empty else
                f" ({', '.join(sorted(set(course_scan['check'])))}): read them before uploading.")]
    kinds = ", ".join(f"{n} {check}" for check, n in notes_scan["check"].value_counts().items())
    lines.append(f"The {n_notes} raw notes: {len(notes_scan)} identifiers ({kinds}). After scrubbing, the checks find "
                 f"{len(after)}" + (": nothing they know left; names without a title still need a person to read." if after.empty
                                    else ": read what is left before uploading."))
    return lines
