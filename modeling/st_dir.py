"""Sentence-transformers directories: the files written beside a tower's own, and what an input model's say.

A saved tower is also a sentence-transformers model: the backbone in the root (``Transformer``), ``1_Pooling``,
``2_Dense`` (the projection, if any), ``Normalize`` (if the tower normalises), ``sentence_bert_config.json`` (the
token budget) and ``config_sentence_transformers.json`` (the tower's prefix as its default prompt), in the classic
layout (``sentence_transformers.models.*`` types, ``pooling_mode_*`` flags) that older releases wrote and 6.x still
reads; both that and 6.x's own layout are read. Only what a tower reproduces exactly is accepted from an input
model: mean, CLS or last-token pooling, and one linear (Identity) Dense after it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scalingnote.artifacts import Pooling, TowerMeta
from scalingnote.errors import UserError
from scalingnote.runtime.tokenization import json_or_empty
from scalingnote.specs import st_modules

IDENTITY = "torch.nn.modules.linear.Identity"
TANH = "torch.nn.modules.activation.Tanh"  # what a Dense config without an activation gets
DENSE_WEIGHTS = "model.safetensors"
MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
# ST pooling modes (6.x ``pooling_mode``; older releases' ``pooling_mode_*`` flags) that a tower has
ST_POOLING: dict[str, Pooling] = {"mean": "mean", "cls": "cls", "lasttoken": "last-token"}
LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
PROMPT_NAMES = {"query": ("query",), "doc": ("document",), "shared": ("query", "document")}


def st_pooling(path: Path) -> Pooling | None:
    """The pooling a directory's sentence-transformers Pooling module names (None: it has none)."""
    folder = next((f for kind, f in st_modules(path) if kind == "Pooling"), path / "1_Pooling")
    config = json_or_empty(folder / "config.json")
    mode = config.get("pooling_mode") or [name for flag, name in LEGACY_FLAGS.items() if config.get(flag)]
    modes = [mode] if isinstance(mode, str) else list(mode)
    if not modes:
        return None
    if len(modes) > 1 or modes[0] not in ST_POOLING:
        raise UserError(f"{folder}: pooling {'+'.join(modes)} is not supported (mean, cls or lasttoken)")
    return ST_POOLING[modes[0]]


def st_max_length(path: Path) -> int | None:
    """The token budget a directory's sentence-transformers files set: ``max_seq_length``, else (as 6.x saves
    it) the tokenizer's ``model_max_length`` capped by the positions; None: they set none."""
    if length := json_or_empty(path / "sentence_bert_config.json").get("max_seq_length"):
        return int(length)
    tokenizer = json_or_empty(path / "tokenizer_config.json").get("model_max_length")
    if not st_modules(path) or not isinstance(tokenizer, int):
        return None
    positions = json_or_empty(path / "config.json").get("max_position_embeddings")
    return min(tokenizer, positions) if isinstance(positions, int) and positions > 0 else tokenizer


def st_dense(path: Path, hidden: int) -> nn.Linear | None:
    """A directory's sentence-transformers Dense module as a tower projection (None: it lists none).

    Refused with one line: modules a tower does not reproduce, more than one Dense, a Dense that is not right
    after the Pooling, an activation other than Identity, a residual Dense."""
    modules = st_modules(path)
    kinds = [kind for kind, _ in modules]
    if unknown := sorted(set(kinds) - set(MODULES)):
        raise UserError(f"{path}: sentence-transformers module(s) {', '.join(unknown)} are not supported")
    if "Dense" not in kinds:
        return None
    if kinds not in (["Transformer", "Pooling", "Dense"], ["Transformer", "Pooling", "Dense", "Normalize"]):
        raise UserError(f"{path}: sentence-transformers modules {kinds}: only Transformer, Pooling, Dense[, Normalize]")
    folder = modules[2][1]
    config = json_or_empty(folder / "config.json")
    activation = config.get("activation_function", TANH)
    if activation != IDENTITY:
        raise UserError(f"{folder}: Dense activation {activation} is not supported (a projection is linear: Identity)")
    if config.get("use_residual") or config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise UserError(f"{folder}: only a plain Dense on the sentence embedding is supported (no residual)")
    if config.get("in_features") != hidden or not isinstance(config.get("out_features"), int):
        raise UserError(f"{folder}: Dense in_features {config.get('in_features')} != the backbone's hidden {hidden}")
    linear = nn.Linear(hidden, config["out_features"], bias=bool(config.get("bias", True)))
    state = _dense_state(folder)
    linear.load_state_dict({k.removeprefix("linear."): v.float() for k, v in state.items()})
    return linear


def _dense_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / DENSE_WEIGHTS).is_file():
        return load_file(folder / DENSE_WEIGHTS)
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(f"{folder}: the Dense module has no weights ({DENSE_WEIGHTS} or pytorch_model.bin)")


def write_st_files(path: Path, meta: TowerMeta, hidden: int, projection: nn.Linear | None) -> None:
    """Make the saved tower at ``path`` (backbone and tokenizer already there) a sentence-transformers model."""
    enc = meta.encoder
    modules = ["Transformer", "Pooling"]
    mode = next(st for st, ours in ST_POOLING.items() if ours == enc.pooling)
    flags = {flag: name == mode for flag, name in LEGACY_FLAGS.items()}
    _write_json(path / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden} | flags)
    if projection is not None:
        modules.append("Dense")
        dense = {
            "in_features": projection.in_features,
            "out_features": projection.out_features,
            "bias": projection.bias is not None,
            "activation_function": IDENTITY,
        }
        _write_json(path / "2_Dense" / "config.json", dense)
        state = {f"linear.{k}": v.detach().float().contiguous() for k, v in projection.state_dict().items()}
        save_file(state, path / "2_Dense" / DENSE_WEIGHTS, metadata={"format": "pt"})
    if enc.normalize:
        modules.append("Normalize")
        (path / f"{len(modules) - 1}_Normalize").mkdir(exist_ok=True)
    entries = [
        {
            "idx": i,
            "name": str(i),
            "path": "" if i == 0 else f"{i}_{kind}",
            "type": f"sentence_transformers.models.{kind}",
        }
        for i, kind in enumerate(modules)
    ]
    _write_json(path / "modules.json", entries)
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": enc.max_length, "do_lower_case": False})
    names = PROMPT_NAMES[meta.role]
    st_config = {
        "model_type": "SentenceTransformer",
        "prompts": {name: enc.prefix for name in names} if enc.prefix else {},
        "default_prompt_name": names[0] if enc.prefix else None,
        "similarity_fn_name": "cosine" if enc.normalize else "dot",
    }
    _write_json(path / "config_sentence_transformers.json", st_config)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
