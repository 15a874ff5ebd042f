"""Persistence for the local server: SQLite for records, a folder for file contents and model weights.

Every record has an ``owner`` (a hash of the API key that created it): one key never sees another key's
files, jobs, models or stored completions. Records are stored as JSON documents in the shape the API
returns them, with a few indexed columns for lookups and ordering. File contents are written atomically
(temporary file, then rename), so a crash never leaves half a file behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,            -- file, job, event, checkpoint, model, completion
    id TEXT NOT NULL,
    owner TEXT NOT NULL,
    parent TEXT,                   -- the job of an event or checkpoint
    seq INTEGER NOT NULL,          -- insertion order (newest-first listings, cursors)
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL,            -- the JSON the API returns
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS records_owner ON records (kind, owner, seq);
CREATE INDEX IF NOT EXISTS records_parent ON records (kind, parent, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_id(prefix: str, length: int = 24) -> str:
    """An OpenAI-style id such as ``file-3fQ...`` (random, URL-safe)."""
    return f"{prefix}-{''.join(secrets.choice(_ALPHABET) for _ in range(length))}"


def owner_of(api_key: str) -> str:
    """The namespace of an API key: a hash, so keys are never stored."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def now() -> int:
    return int(time.time())


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _filters(kind: str, owner: str | None, parent: str | None) -> tuple[list[str], list[Any]]:
    """WHERE clauses and their arguments for records of a kind, optionally of an owner and a parent."""
    clauses, args = ["kind = ?"], [kind]
    for column, value in (("owner", owner), ("parent", parent)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return clauses, args


class Store:
    """Thread-safe access to the server's records and file contents under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.files_dir = self.data_dir / "files"
        self.models_dir = self.data_dir / "models"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.data_dir / "workbook.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    # -- records ------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._db.execute("INSERT INTO counters (name, value) VALUES ('seq', 1) ON CONFLICT(name) DO UPDATE SET value = value + 1")
        return self._db.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()[0]

    def put(self, kind: str, body: dict[str, Any], owner: str, parent: str | None = None) -> dict[str, Any]:
        """Insert or replace a record (keeps its original order when replacing)."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM records WHERE kind = ? AND id = ?", (kind, body["id"])).fetchone()
            seq = row[0] if row else self._next_seq()
            created = body.get("created_at", body.get("created", now()))
            self._db.execute(
                "INSERT OR REPLACE INTO records (kind, id, owner, parent, seq, created_at, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, body["id"], owner, parent, seq, created, json.dumps(body)))
        return body

    def get(self, kind: str, record_id: str, owner: str | None) -> dict[str, Any] | None:
        """A record by id, or None when it does not exist or belongs to another key."""
        with self._lock:
            row = self._db.execute("SELECT owner, body FROM records WHERE kind = ? AND id = ?", (kind, record_id)).fetchone()
        if row is None or (owner is not None and row[0] != owner):
            return None
        return json.loads(row[1])

    def owner(self, kind: str, record_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT owner FROM records WHERE kind = ? AND id = ?", (kind, record_id)).fetchone()
        return row[0] if row else None

    def delete(self, kind: str, record_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, record_id))

    def update(self, kind: str, record_id: str, **changes: Any) -> dict[str, Any]:
        """Change fields of a record in place; returns the new body."""
        with self._lock:
            row = self._db.execute("SELECT owner, parent, body FROM records WHERE kind = ? AND id = ?", (kind, record_id)).fetchone()
            if row is None:
                raise KeyError(f"{kind} {record_id}")
            body = {**json.loads(row[2]), **changes}
            self._db.execute("UPDATE records SET body = ? WHERE kind = ? AND id = ?", (json.dumps(body), kind, record_id))
        return body

    def page(self, kind: str, owner: str | None, *, parent: str | None = None, after: str | None = None,
             limit: int = 20, newest_first: bool = True, where: Any = None) -> tuple[list[dict[str, Any]], bool]:
        """One page of records (``after``: the id of the last record of the previous page), and has_more.

        ``where`` is an optional predicate on the body, applied before paging.
        """
        clauses, args = _filters(kind, owner, parent)
        order = "DESC" if newest_first else "ASC"
        with self._lock:
            if after is not None:
                row = self._db.execute("SELECT seq FROM records WHERE kind = ? AND id = ?", (kind, after)).fetchone()
                if row is not None:
                    clauses.append("seq < ?" if newest_first else "seq > ?")
                    args.append(row[0])
            rows = self._db.execute(f"SELECT body FROM records WHERE {' AND '.join(clauses)} ORDER BY seq {order}", args)
            items: list[dict[str, Any]] = []
            has_more = False
            for (body,) in rows:
                item = json.loads(body)
                if where is not None and not where(item):
                    continue
                if len(items) == limit:
                    has_more = True
                    break
                items.append(item)
        return items, has_more

    def all(self, kind: str, *, owner: str | None = None, parent: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every record of a kind, oldest first, with its owner."""
        clauses, args = _filters(kind, owner, parent)
        with self._lock:
            rows = self._db.execute(f"SELECT owner, body FROM records WHERE {' AND '.join(clauses)} ORDER BY seq ASC", args).fetchall()
        for row_owner, body in rows:
            yield row_owner, json.loads(body)

    # -- file contents ------------------------------------------------------------------------
    def file_path(self, owner: str, file_id: str) -> Path:
        return self.files_dir / owner / file_id

    def write_file(self, owner: str, file_id: str, data: bytes) -> Path:
        path = self.file_path(owner, file_id)
        write_atomically(path, data)
        return path

    def model_dir(self, owner: str, name: str) -> Path:
        """Where a fine-tuned model's (or checkpoint's) weights live; the name is hashed to a safe folder."""
        return self.models_dir / owner / hashlib.sha256(name.encode()).hexdigest()[:24]
