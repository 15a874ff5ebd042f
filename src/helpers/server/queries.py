"""Query parameters OpenAI's list endpoints share: ``limit`` and ``metadata[key]=value``."""
from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from helpers.server.errors import bad_request


def limit_param(value: str | None, default: int = 20, maximum: int = 100) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise bad_request(f"'limit' must be a whole number, got {value!r}.", "limit") from None
    if not 1 <= limit <= maximum:
        raise bad_request(f"'limit' must be between 1 and {maximum}, got {limit}.", "limit")
    return limit


def newest_first(order: str) -> bool:
    """``order``: "desc" (newest first) or "asc"."""
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'.", "order")
    return order == "desc"


def metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` query parameters."""
    out = {}
    for key, value in request.query_params.multi_items():
        match = re.fullmatch(r"metadata\[(.+)\]", key)
        if match:
            out[match.group(1)] = value
    return out


def metadata_matches(body: dict[str, Any], wanted: dict[str, str]) -> bool:
    return all((body.get("metadata") or {}).get(k) == v for k, v in wanted.items())
