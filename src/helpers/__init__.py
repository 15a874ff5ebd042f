"""Helpers for the Fine-Tuning & Distillation Workbook.

Importing ``helpers`` makes the real ``tiktoken`` work offline for ``o200k_base`` and ``cl100k_base``
(see :mod:`helpers.tokens`).
"""
from __future__ import annotations

from helpers.tokens import ensure_offline_encodings

ensure_offline_encodings()

__all__ = ["ensure_offline_encodings"]
