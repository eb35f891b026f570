"""Milvus as a serving backend (pymilvus ``MilvusClient``; Milvus Lite or a cluster), no torch.

* Each index version is one collection, ``<alias>_<version id>`` (``-`` → ``_``): VARCHAR primary key ``id``,
  ``title``, JSON ``metadata`` (from the document store: filters run on it), FLOAT_VECTOR ``vector`` with an
  exact FLAT/IP index, filled from the version's directory under an
  index root (that root keeps manifests and checksums as with FAISS). Its properties hold the version id, the
  doc tower's sha256 and the whole index manifest, so a server can check what an alias points to.
* An alias names the collection being served; it moves (``create_alias`` / ``alter_alias``) only to a
  collection that is complete (row count = manifest count), flushed and loaded.
* :meth:`MilvusStore.sync` makes the alias follow ``ROOT/current`` under ``ROOT/.lock`` and drops the collections
  of versions no longer on disk (the versions' retention, ``keep``).
* pymilvus is imported lazily: the default install (no ``scale`` extra) never needs it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scalingnote.artifacts import IndexManifest
from scalingnote.errors import ArtifactError, BackendError, UserError
from scalingnote.index import versions
from scalingnote.index.docstore import AnyOf, Filter
from scalingnote.index.query import Mode, SearchSpec
from scalingnote.index.store import Hit, LoadedIndex

DEFAULT_ALIAS = "scalingnote"
ALIAS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,180}$"
VERSION_KEY, SPACE_KEY, MANIFEST_KEY = "scalingnote.version", "scalingnote.space_sha256", "scalingnote.manifest"
MAX_ID, MAX_TITLE = 512, 8192
INSERT_ROWS = 2000
SEARCH = {"metric_type": "IP"}


def connect(uri: str) -> Any:
    """A ``MilvusClient`` on ``uri`` (a Milvus Lite ``.db`` file, or ``http://host:port``); :class:`BackendError`."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise BackendError("the milvus backend needs pymilvus: pip install 'scalingnote[scale]'") from None
    try:
        client = MilvusClient(uri)
        client.list_collections()
    except Exception as exc:  # pymilvus raises MilvusException subclasses, grpc errors, OSError
        hint = "" if "://" in uri else (
            " (a Milvus Lite file opens in one process only: run `python -m milvus_lite server --data-dir DIR "
            "--port N` and use http://127.0.0.1:N)"
        )  # fmt: skip
        raise BackendError(f"cannot reach Milvus at {uri}: {_message(exc)}{hint}") from None
    return client


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0]


def _clip(title: str) -> str:
    """``title`` cut to the VARCHAR field's byte limit (on a character boundary)."""
    return title.encode()[:MAX_TITLE].decode(errors="ignore")


@contextmanager
def _calls(where: str) -> Iterator[None]:
    """Turn what pymilvus raises (``MilvusException``, grpc errors) into a one-line :class:`BackendError`."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        raise BackendError(f"{where}: {_message(exc)}") from None


def check_alias(alias: str) -> str:
    if not re.match(ALIAS_PATTERN, alias):
        raise UserError(f"invalid Milvus alias {alias!r}: letters, digits and '_', not starting with a digit")
    return alias


def collection_name(alias: str, version: str) -> str:
    return f"{alias}_{version.replace('-', '_')}"


def filter_expr(flt: Filter) -> str:
    """``flt`` as a Milvus boolean expression (the same grammar as FAISS's: ids, then every field condition; a
    list-valued field matches any of its elements)."""
    parts = [] if flt.ids is None else [f"id in {json.dumps(flt.ids)}"]
    for key, condition in flt.fields.items():
        path = "metadata" + "".join(f"[{json.dumps(part)}]" for part in key.split("."))
        values = [json.dumps(v) for v in (condition.in_ if isinstance(condition, AnyOf) else [condition])]
        either = [f"{path} == {v}" for v in values] + [f"json_contains({path}, {v})" for v in values]
        parts.append(f"({' or '.join(either)})")
    return " and ".join(parts)


@dataclass
class MilvusIndex:
    """One version's collection, searched exactly like :class:`LoadedIndex` (the :class:`SearchIndex` seam)."""

    client: Any
    collection: str
    manifest: IndexManifest

    @classmethod
    def open(cls, client: Any, collection: str) -> MilvusIndex:
        """Read the manifest from ``collection``'s properties and check it holds all its rows; load it."""
        where = f"Milvus collection {collection!r}"
        with _calls(where):
            if not client.has_collection(collection):
                raise BackendError(f"{where} does not exist")
            props = client.describe_collection(collection).get("properties", {})
            if MANIFEST_KEY not in props:
                raise ArtifactError(f"{where} has no scalingnote manifest in its properties")
            manifest = IndexManifest.model_validate_json(props[MANIFEST_KEY])
            if props.get(SPACE_KEY) != manifest.space.sha256 or props.get(VERSION_KEY) != manifest.version:
                raise ArtifactError(f"{where}: its properties disagree with its manifest")
            rows = int(client.get_collection_stats(collection)["row_count"])
            if rows != manifest.count:
                raise ArtifactError(f"{where} holds {rows} rows, its manifest says {manifest.count}")
            client.load_collection(collection)
        return cls(client, collection, manifest)

    @property
    def dim(self) -> int:
        return self.manifest.space.dim

    @property
    def source(self) -> str:
        return f"Milvus collection {self.collection}"

    modes: tuple[Mode, ...] = ("dense",)
    default_mode: Mode = "dense"

    def hits(self, queries: np.ndarray, k: int, expr: str = "", fields: tuple[str, ...] = ()) -> list[list[Hit]]:
        """Top-``k`` documents of each query vector, best first (inner product, exact), among those ``expr``
        matches; with ``fields``, the asked metadata keys (``title``, ``metadata`` or a top-level key)."""
        data = np.asarray(queries, dtype=np.float32).tolist()
        output = ["title", "metadata"] if fields else ["title"]
        found = self.client.search(
            self.collection, data=data, limit=min(k, self.manifest.count), output_fields=output,
            anns_field="vector", search_params=SEARCH, filter=expr,
        )  # fmt: skip
        return [[self._hit(h, fields) for h in row] for row in found]

    @staticmethod
    def _hit(found: dict, fields: tuple[str, ...]) -> Hit:
        entity = found["entity"]
        title = entity.get("title") or None
        if not fields:
            return Hit(id=found["id"], score=found["distance"], title=title)
        doc = {"title": title, "metadata": entity.get("metadata") or None, **(entity.get("metadata") or {})}
        return Hit(id=found["id"], score=found["distance"], title=title,
                   fields={name: doc[name] for name in fields if doc.get(name) is not None})  # fmt: skip

    def query(self, vectors: np.ndarray, texts: Sequence[str], specs: Sequence[SearchSpec]) -> list[list[Hit]]:
        """Dense queries as ``specs`` ask, one Milvus search each: the filter as a Milvus expression, fields, the
        score floor."""
        out = []
        for i, spec in enumerate(specs):
            if (spec.mode or "dense") != "dense":
                raise UserError(f"{self.source} serves dense retrieval only, not mode {spec.mode!r}")
            expr = "" if spec.filter is None else filter_expr(spec.filter)
            (found,) = self.hits(vectors[i : i + 1], spec.k, expr, spec.fields)
            floor = spec.score_threshold
            out.append(found if floor is None else [h for h in found if h.score >= floor])
        return out


@dataclass
class MilvusStore:
    """The collections behind one alias on one Milvus."""

    client: Any
    alias: str
    uri: str

    @classmethod
    def connect(cls, uri: str, alias: str = DEFAULT_ALIAS) -> MilvusStore:
        return cls(connect(uri), check_alias(alias), uri)

    def resolve(self) -> str:
        """The collection the alias points to; :class:`BackendError` when the alias does not exist."""
        with _calls(f"Milvus at {self.uri}"):
            if self.alias in self.client.list_aliases().get("aliases", []):
                return self.client.describe_alias(self.alias)["collection_name"]
        raise BackendError(
            f"Milvus alias {self.alias!r} does not exist at {self.uri}: "
            "publish a version with `scalingnote index rebuild --backend milvus` first"
        )

    def collections(self) -> dict[str, str]:
        """Version id → collection name, for this alias's collections (oldest first)."""
        found = {}
        with _calls(f"Milvus at {self.uri}"):
            for name in self.client.list_collections():
                if not name.startswith(f"{self.alias}_"):
                    continue
                version = self.client.describe_collection(name).get("properties", {}).get(VERSION_KEY)
                if version is not None and collection_name(self.alias, version) == name:
                    found[version] = name
        return dict(sorted(found.items()))

    def write(self, index_dir: Path) -> str:
        """The collection of the index at ``index_dir``, made (a complete one is kept), flushed and loaded."""
        index = LoadedIndex.load(index_dir)
        name = collection_name(self.alias, index.manifest.version)
        with _calls(f"Milvus at {self.uri}, collection {name!r}"):
            if self.client.has_collection(name):
                try:
                    MilvusIndex.open(self.client, name)
                    return name
                except UserError:
                    self.client.drop_collection(name)  # half-written by a killed job
            try:
                vectors = index.vectors()
            except RuntimeError:
                raise UserError(f"{index_dir}: a {index.manifest.factory} index keeps no vectors for Milvus") from None
            self._create(name, index.manifest)
            for start in range(0, len(index.ids), INSERT_ROWS):
                stop = min(start + INSERT_ROWS, len(index.ids))
                meta = index.docstore.fields(range(start, stop), ["metadata"]) if index.docstore else {}
                rows = zip(index.ids[start:stop], index.titles[start:stop], vectors[start:stop].tolist(), strict=True)
                self.client.insert(name, [
                    {"id": i, "title": _clip(t), "metadata": meta.get(start + n, {}).get("metadata", {}), "vector": v}
                    for n, (i, t, v) in enumerate(rows)
                ])  # fmt: skip
            self.client.flush(name)
        MilvusIndex.open(self.client, name)  # complete and loaded
        return name

    def _create(self, name: str, manifest: IndexManifest) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
        schema.add_field("title", DataType.VARCHAR, max_length=MAX_TITLE)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=manifest.space.dim)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        props = {VERSION_KEY: manifest.version, SPACE_KEY: manifest.space.sha256}
        props[MANIFEST_KEY] = manifest.model_dump_json()
        self.client.create_collection(name, schema=schema, index_params=params, properties=props)

    def point(self, collection: str) -> None:
        """Repoint the alias at ``collection`` (created on first use)."""
        with _calls(f"Milvus at {self.uri}, alias {self.alias!r}"):
            if self.alias in self.client.list_aliases().get("aliases", []):
                self.client.alter_alias(collection, self.alias)
            else:
                self.client.create_alias(collection, self.alias)

    def sync(self, root: Path) -> str:
        """Point the alias at ``ROOT/current``'s collection (written if missing); drop versions no longer kept."""
        root = Path(root)
        with versions.locked(root):
            current = versions.current_path(root)
            name = self.write(current)
            self.point(name)
            kept = set(versions.list_versions(root))
            for version, collection in self.collections().items():
                if version not in kept and collection != name:
                    with _calls(f"Milvus at {self.uri}"):
                        self.client.drop_collection(collection)
        return name


def store_for(backend: str, uri: str | None, alias: str = DEFAULT_ALIAS) -> MilvusStore | None:
    """The Milvus an index command also publishes to: None for ``faiss``; connected (fails fast) for ``milvus``."""
    if backend == "faiss":
        return None
    if not uri:
        raise UserError("the milvus backend needs a URI: --milvus-uri or SCALINGNOTE_MILVUS_URI (a .db file, http://…)")
    return MilvusStore.connect(uri, alias)
