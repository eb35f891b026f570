"""BEIR-format datasets: ``corpus.jsonl``, ``queries.jsonl`` (or ``.tsv``) and ``qrels/<split>.tsv``.

Every reader validates as it goes and raises :class:`DatasetError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scalingnote.errors import DatasetError

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus entry."""

    id: str
    title: str
    text: str
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def full_text(self) -> str:
        """The text a doc tower encodes: ``title + " " + text`` as in BEIR/MTEB."""
        return f"{self.title} {self.text}".strip()


@dataclass
class BeirDataset:
    """A loaded dataset. ``qrels`` holds the splits that were asked for."""

    root: Path
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, Qrels] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.root.name

    def split_queries(self, split: str) -> dict[str, str]:
        """Queries that have judgements in ``split``, in qrels order."""
        return {qid: self.queries[qid] for qid in self.qrels[split]}


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of every non-blank line of a text file that must exist."""
    if not path.is_file():
        raise DatasetError(f"missing file: {path}")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _str_field(obj: dict, key: str, path: Path, lineno: int, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str | int) or (key == "_id" and str(value) == ""):
        raise DatasetError(f"{path}:{lineno}: field {key!r} missing or not a string")
    return str(value)


def load_corpus(path: Path) -> dict[str, Document]:
    """Read ``corpus.jsonl`` (``_id``, ``text``, optional ``title`` and ``metadata`` object), keeping file order."""
    corpus: dict[str, Document] = {}
    for lineno, obj in _jsonl(path):
        doc_id = _str_field(obj, "_id", path, lineno)
        if doc_id in corpus:
            raise DatasetError(f"{path}:{lineno}: duplicate document id {doc_id!r}")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DatasetError(f"{path}:{lineno}: field 'metadata' is not a JSON object")
        title, text = _str_field(obj, "title", path, lineno, False), _str_field(obj, "text", path, lineno)
        corpus[doc_id] = Document(doc_id, title, text, metadata)
    if not corpus:
        raise DatasetError(f"{path}: no documents")
    return corpus


def load_queries(path: Path) -> dict[str, str]:
    """Read queries from ``queries.jsonl`` (``_id``, ``text``) or a ``qid<TAB>text`` file."""
    queries: dict[str, str] = {}
    if path.suffix == ".jsonl":
        for lineno, obj in _jsonl(path):
            queries[_str_field(obj, "_id", path, lineno)] = _str_field(obj, "text", path, lineno)
    else:
        for lineno, line in _lines(path):
            qid, sep, text = line.rstrip("\r\n").partition("\t")
            if not sep or not qid or not text.strip():
                raise DatasetError(f"{path}:{lineno}: expected 'qid<TAB>query text'")
            queries[qid] = text
    if not queries:
        raise DatasetError(f"{path}: no queries")
    return queries


def load_qrels(path: Path, corpus: dict[str, Document], queries: dict[str, str]) -> Qrels:
    """Read a qrels TSV (header ``query-id corpus-id score``); every id must exist."""
    if not path.is_file():
        raise DatasetError(f"missing file: {path}")
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            row = [c.strip() for c in row]
            if not row or row == [""]:
                continue
            if lineno == 1 and row[0] == "query-id":
                continue
            if len(row) != 3:
                raise DatasetError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(row)}")
            qid, doc_id, score = row
            try:
                rel = int(score)
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: score {score!r} is not an integer") from None
            if qid not in queries:
                raise DatasetError(f"{path}:{lineno}: query id {qid!r} is not in queries")
            if doc_id not in corpus:
                raise DatasetError(f"{path}:{lineno}: document id {doc_id!r} is not in the corpus")
            qrels.setdefault(qid, {})[doc_id] = rel
    if not qrels:
        raise DatasetError(f"{path}: no judgements")
    return qrels


def available_splits(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "qrels").glob("*.tsv"))


def load_dataset(root: Path | str, splits: tuple[str, ...] = ()) -> BeirDataset:
    """Load a BEIR dataset directory and the qrels of ``splits``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory not found: {root}")
    corpus = load_corpus(root / "corpus.jsonl")
    qpath = root / "queries.jsonl"
    queries = load_queries(qpath if qpath.exists() else root / "queries.tsv")
    ds = BeirDataset(root=root, corpus=corpus, queries=queries)
    for split in splits:
        path = root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            have = ", ".join(available_splits(root)) or "none"
            raise DatasetError(f"no qrels for split {split!r} in {root} (available: {have})")
        ds.qrels[split] = load_qrels(path, corpus, queries)
    return ds
