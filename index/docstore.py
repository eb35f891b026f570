"""An index's document store (``docs.sqlite``): each row's id, title, text and BEIR ``metadata``, and the filter
grammar that ``/search`` executes over it.

Metadata is kept as one JSON object per document and, for filtering, exploded into a ``(key, value)`` table
with an index, so an equality or ``in`` condition is an index lookup, not a scan. Nested objects flatten to
dotted keys (``{"a": {"b": 1}}`` is ``a.b``); a list value matches any of its elements (as Qdrant does). Values
are compared as JSON scalars: ``2019`` and ``"2019"`` differ, ``2019`` and ``2019.0`` do not.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scalingnote.beir import Document

DOCSTORE_FILE = "docs.sqlite"
BUILTIN_FIELDS = ("title", "text")  # what ``fields`` may name besides metadata keys
SQL_VARS = 900  # bound parameters per statement (SQLite's old default limit is 999)

Scalar = Annotated[str | bool | int | float, Field(union_mode="left_to_right")]


class AnyOf(BaseModel):
    """``{"in": [...]}``: the field equals one of these values."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    in_: list[Scalar] = Field(alias="in", min_length=1, max_length=1024)


class Filter(BaseModel):
    """Documents to search among: ``ids`` (an allow-list) and/or ``fields`` (every condition holds: a field
    equals a value, or ``{"in": [...]}`` one of several). An empty filter matches every document."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    ids: list[str] | None = Field(None, max_length=100_000, description="Only these document ids.")
    fields: dict[str, Scalar | AnyOf] = Field(
        default_factory=dict,
        max_length=32,
        description='Metadata conditions, all of which must hold: value or {"in": [values]}.',
    )

    @property
    def empty(self) -> bool:
        return self.ids is None and not self.fields


def _canonical(value: object) -> str:
    """A scalar as the filter table stores it (integral floats as ints, so 2019.0 matches 2019)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, ensure_ascii=False)


def _flatten(metadata: dict, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, canonical value) for every scalar in ``metadata``; lists give one pair per element."""
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        elif isinstance(value, list):
            yield from ((name, _canonical(v)) for v in value if not isinstance(v, dict | list))
        elif value is not None:
            yield name, _canonical(value)


def write_docstore(path: Path, docs: Iterable[Document]) -> None:
    """Write ``docs`` (in row order) to a new SQLite file at ``path``."""
    db = sqlite3.connect(path)
    try:
        db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE docs (row INTEGER PRIMARY KEY, id TEXT NOT NULL, title TEXT, text TEXT, metadata TEXT);"
            "CREATE TABLE fields (key TEXT NOT NULL, value TEXT NOT NULL, row INTEGER NOT NULL);"
        )
        for row, doc in enumerate(docs):
            meta = json.dumps(doc.metadata, ensure_ascii=False) if doc.metadata else None
            db.execute("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", (row, doc.id, doc.title, doc.text, meta))
            db.executemany("INSERT INTO fields VALUES (?, ?, ?)", ((k, v, row) for k, v in _flatten(doc.metadata)))
        db.executescript("CREATE INDEX fields_kv ON fields (key, value, row); CREATE INDEX docs_id ON docs (id);")
        db.commit()
    finally:
        db.close()


def _chunks(values: Sequence[Any], size: int = SQL_VARS) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class DocStore:
    """Read-only access to a ``docs.sqlite``; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def rows(self, fields: dict[str, Scalar | AnyOf], within: set[int] | None = None) -> np.ndarray:
        """Sorted row numbers (int64) of the documents that meet every condition of a filter's ``fields``, among
        the rows ``within`` when given (an id allow-list, resolved by the caller); it needs one or the other."""
        selected = within
        for key, condition in fields.items():
            values = [_canonical(v) for v in condition.in_] if isinstance(condition, AnyOf) else [_canonical(condition)]
            sql = f"SELECT row FROM fields WHERE key = ? AND value IN ({','.join('?' * len(values))})"
            matched = {r for (r,) in self._query(sql, [key, *values])}
            selected = matched if selected is None else selected & matched
            if not selected:
                break
        assert selected is not None, "DocStore.rows needs a field condition or the rows within"
        return np.array(sorted(selected), dtype=np.int64)

    def fields(self, rows: Sequence[int], names: Sequence[str]) -> dict[int, dict[str, Any]]:
        """For each row, the asked ``names`` it has: ``title``, ``text``, ``metadata`` (all of it) or a top-level
        or dotted metadata key. Names a document lacks are left out."""
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(list(rows)):
            sql = f"SELECT row, title, text, metadata FROM docs WHERE row IN ({','.join('?' * len(chunk))})"
            for row, title, text, meta in self._query(sql, chunk):
                doc = {"title": title, "text": text, "metadata": json.loads(meta) if meta else {}}
                out[row] = {name: value for name in names if (value := _lookup(doc, name)) is not None}
        return out


def _lookup(doc: dict[str, Any], name: str) -> Any:
    """``name`` in a stored document: a built-in field, ``metadata``, or a (dotted) metadata key."""
    if name in (*BUILTIN_FIELDS, "metadata"):
        return doc[name] or None
    value: Any = doc["metadata"]
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
