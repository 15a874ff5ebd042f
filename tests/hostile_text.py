"""The shared corpus of hostile text: strings that are valid JSON but not text, and lines that are not text at all.

Every entry point that takes text (the validator, the upload sniff, a job's validation, chat completions, stored
completions' metadata, job metadata) is tested against all of it (``test_faults.py``, ``test_validator.py``), and the
schema-driven fuzz run sends the strings too.
"""
from __future__ import annotations

# valid JSON strings (json.dumps writes the escapes) that the one text rule refuses, with the words its error uses
NOT_TEXT = {
    "lone-high-surrogate": ("\ud800", "lone surrogate"),
    "lone-low-surrogate": ("code \udc00 here", "lone surrogate"),
    "nul": ("a\x00b", "NUL"),
    "noncharacter-fffe": ("\ufffe", "U+FFFE"),
    "noncharacter-ffff": ("x\uffff", "U+FFFF"),
}
# text that is odd but is text: accepted everywhere, answered normally
ODD_BUT_TEXT = {"bom-mid-text": "a\ufeffb", "rtl-override": "\u202eabc", "zero-width": "a\u200bb", "emoji": "\U0001F9FE"}
# whole lines that are not a JSON object of text, with the validator's code for each
GOOD = b'{"messages": [{"role": "user", "content": "lipid panel"}, {"role": "assistant", "content": "Lipid panel - CPT Code: 80061"}]}'
BAD_LINES = {
    "overlong-utf8": (GOOD.replace(b"lipid", b"\xc0\xaflipid"), "not_utf8"),
    "truncated-utf8": (GOOD.replace(b"lipid", b"\xe2\x82lipid"), "not_utf8"),
    "bom-mid-file": (b"\xef\xbb\xbf" + GOOD, "invalid_json"),
    "raw-nul": (GOOD.replace(b"lipid", b"li\x00pid"), "invalid_json"),
    "nested-100k-deep": (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_json"),
    "nested-200-deep": (b'{"messages": ' + b"[" * 200 + b"]" * 200 + b"}", "invalid_json"),
}
TEN_MB_LINE = GOOD.replace(b"lipid panel", b"x" * 10_000_000)  # valid, but far longer than any context: a warning, not a crash
