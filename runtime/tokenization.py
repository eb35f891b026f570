"""Tokenisation shared by towers (torch) and ONNX bundles (serving): the ``tokenizers`` library only."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer
from tokenizers.processors import TemplateProcessing

from scalingnote.artifacts import TOKENIZER_FILE, TOKENIZER_SIDECARS
from scalingnote.errors import ArtifactError


def json_or_empty(path: Path) -> dict:
    """A JSON file's object, or ``{}`` when the file is absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_tokenizer(path: Path, max_length: int, append_eos: bool) -> tuple[Tokenizer, int]:
    """The tower's fast tokenizer (truncating, unpadded) and its pad id."""
    if not (path / TOKENIZER_FILE).is_file():
        raise ArtifactError(f"{path} has no {TOKENIZER_FILE} (a fast tokenizer is required)")
    tok = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    tok.no_padding()
    special: dict = {}
    for name in TOKENIZER_SIDECARS:
        special |= json_or_empty(path / name)
    if append_eos:
        eos = _token(special.get("eos_token"))
        if eos is None or tok.token_to_id(eos) is None:
            raise ArtifactError(f"{path}: last-token pooling needs an EOS token")
        tok.post_processor = TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))])
    tok.enable_truncation(max_length)
    pad = _token(special.get("pad_token")) or _token(special.get("eos_token"))
    pad_id = tok.token_to_id(pad) if pad else None
    return tok, pad_id if pad_id is not None else 0


def _token(value: object) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def pad_encodings(encodings: Sequence[Encoding], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a batch to its longest member: ``input_ids`` and ``attention_mask`` as int64."""
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask


def length_sorted_batches(encodings: Sequence[Encoding], batch_size: int) -> Iterator[np.ndarray]:
    """Row numbers of ``encodings`` in batches of similar token length, longest first (least padding)."""
    order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def length_groups(lengths: Sequence[int], call_cost: int) -> list[np.ndarray]:
    """Row numbers of ``lengths`` split into groups, each to be padded to its own longest, that minimise the
    padded tokens plus ``call_cost`` tokens per group (an encoder call's fixed cost in tokens of work).

    Exact over the length-sorted rows (a group is always a run of them): O(n^2) for n rows, small next to one
    call. ``call_cost=0`` would give one group per distinct length; a large one gives a single group."""
    order = np.argsort(lengths, kind="stable")
    ordered = [lengths[i] for i in order]
    best = [0] + [0] * len(ordered)  # best[j]: least cost of the first j sorted rows
    start = [0] * (len(ordered) + 1)  # start[j]: where the last group of that split starts
    for j in range(1, len(ordered) + 1):
        longest = ordered[j - 1]
        best[j], start[j] = min((best[i] + call_cost + (j - i) * longest, i) for i in range(j))
    groups, j = [], len(ordered)
    while j > 0:
        groups.append(order[start[j] : j])
        j = start[j]
    return groups[::-1]


def copy_sidecars(src: Path | None, dst: Path) -> None:
    """Copy the tokenizer's special-token files that sit next to ``tokenizer.json`` (when ``src`` has them)."""
    if src is None or Path(src).resolve() == Path(dst).resolve():
        return
    for name in TOKENIZER_SIDECARS:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
