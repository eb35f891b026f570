"""The artifact contract shared by training, indexing and serving (no torch).

Two artifact kinds, each a directory with a JSON manifest:

* **index** (``manifest.json``): ``index.faiss``, ``docs.json`` (ordered ids and titles), the embedding space
  of the doc tower that made the vectors, metric, count, factory string and file checksums.
* **model bundle** (``bundle.json``): ONNX query encoder(s), ``tokenizer.json``, pooling, dim, max length,
  prefix, teacher id, the embedding space it queries and its export gates.

A query encoder may search an index only when both name the same :class:`EmbeddingSpace`.
Directories are published atomically: build in a sibling staging dir, then rename into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from scalingnote.errors import ArtifactError, SpaceMismatchError, validation_message

# Every file name of the contract.
INDEX_MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.json"
BUNDLE_MANIFEST = "bundle.json"
TOWER_JSON = "tower.json"
DUAL_JSON = "dual.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_SIDECARS = ("tokenizer_config.json", "special_tokens_map.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")

Pooling = Literal["mean", "cls", "last-token"]


class EmbeddingSpace(BaseModel):
    """Identity of an embedding space: the doc tower that embeds the corpus (id, weights hash, dim)."""

    model_config = ConfigDict(frozen=True)

    id: str
    sha256: str
    dim: int

    def short(self) -> str:
        return f"{self.id} (sha256 {self.sha256[:12]}, dim {self.dim})"


class EncoderConfig(BaseModel):
    """How text becomes a vector: shared by towers, bundles and index manifests."""

    pooling: Pooling
    normalize: bool = True
    max_length: int
    prefix: str = ""


def _space_field(old: str, default: object = ...) -> object:
    """A ``space`` field that also reads the name older manifests used."""
    return Field(default, validation_alias=AliasChoices("space", old))


class TowerMeta(BaseModel):
    """``tower.json``: a trained tower's config; ``space`` is the doc space a query tower embeds into."""

    id: str
    backbone: str
    role: Literal["query", "doc", "shared"] = "shared"
    encoder: EncoderConfig
    dim: int
    append_eos: bool = False
    projection: bool = False
    space: EmbeddingSpace | None = _space_field("target", None)
    teacher: str = ""


class VectorCounts(BaseModel):
    """How an index's vectors came about: embedded now, reused from the embedding cache, and how many of the
    previous version's documents it dropped (None: no previous version to compare with)."""

    embedded: int
    reused: int
    dropped: int | None = None


class SearchTuning(BaseModel):
    """Search parameters an ANN index is served with, and the recall@k against exact search they measured on
    held-out queries (``source``: where those came from) when chosen for ``recall_target``."""

    params: dict[str, int]
    recall_target: float
    recall: float
    k: int
    queries: int
    source: str


class IndexManifest(BaseModel):
    format: Literal["scalingnote-index/1"] = "scalingnote-index/1"
    version: str
    space: EmbeddingSpace = _space_field("doc_tower")
    encoder: EncoderConfig
    metric: Literal["ip", "l2"] = "ip"
    count: int
    factory: str
    dataset: str = ""
    created_at: str
    files: dict[str, str]
    vectors: VectorCounts | None = None
    search: SearchTuning | None = None


class BundleManifest(BaseModel):
    format: Literal["scalingnote-bundle/1"] = "scalingnote-bundle/1"
    name: str
    teacher_id: str
    space: EmbeddingSpace = _space_field("doc_tower")
    encoder: EncoderConfig
    dim: int
    architecture: Literal["transformer", "static"] = "transformer"  # static: a token table, mean-pooled
    variants: dict[str, str]
    gates: dict[str, float] = Field({}, validation_alias=AliasChoices("gates", "parity"))
    created_at: str
    files: dict[str, str]


M = TypeVar("M", bound=BaseModel)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_version_id() -> str:
    """Sortable, unique version id, e.g. ``20261126T223000Z-1a2b3c``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """Hash of a model directory's weight files (names and contents), stable across copies."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ArtifactError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {model_dir}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(model_dir).as_posix().encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def checksums(directory: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(directory / name) for name in names}


def write_manifest(directory: Path, filename: str, manifest: BaseModel) -> None:
    (directory / filename).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")


def read_manifest(directory: Path, filename: str, model: type[M]) -> M:
    path = Path(directory) / filename
    if not Path(directory).is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {filename}: not a scalingnote artifact")
    try:
        return model.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: invalid manifest (malformed JSON: {exc.msg})") from None
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest ({validation_message(exc)})") from None


def verify_checksums(directory: Path, files: dict[str, str]) -> None:
    """Raise :class:`ArtifactError` if a listed file is missing or its sha256 differs."""
    for name, expected in files.items():
        path = Path(directory) / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: missing file {name}")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{directory}: checksum mismatch for {name} (corrupt or modified)")


def read_index_manifest(directory: Path, verify: bool = False) -> IndexManifest:
    manifest = read_manifest(directory, INDEX_MANIFEST, IndexManifest)
    if verify:
        verify_checksums(directory, manifest.files)
    return manifest


def read_bundle_manifest(directory: Path, verify: bool = False) -> BundleManifest:
    manifest = read_manifest(directory, BUNDLE_MANIFEST, BundleManifest)
    if verify:
        verify_checksums(directory, manifest.files)
    return manifest


def check_space(query_space: EmbeddingSpace, index_space: EmbeddingSpace, what: str = "query encoder") -> None:
    """Refuse a query encoder that does not embed into the index's space."""
    if query_space.dim != index_space.dim:
        raise SpaceMismatchError(
            f"{what} dim {query_space.dim} does not match index dim {index_space.dim} "
            f"(index built by {index_space.short()})"
        )
    if query_space.sha256 != index_space.sha256:
        raise SpaceMismatchError(
            f"{what} targets doc tower {query_space.short()}, but the index was built by "
            f"{index_space.short()}: different embedding spaces"
        )


def staging_dir(final: Path) -> Path:
    """A fresh hidden sibling of ``final`` to build into (same filesystem, so rename is atomic)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished staging dir to ``final``; an existing ``final`` is replaced atomically."""
    tmp, final = Path(tmp), Path(final)
    fsync_dir(tmp)
    if not final.exists():
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)
    else:  # non-Linux fallback: a short window where final is absent, never half-written
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
