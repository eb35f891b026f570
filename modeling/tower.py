"""A tower: a Hugging Face backbone plus pooling, optional projection and L2 normalisation.

Tokenisation uses the ``tokenizers`` library directly, configured here (truncation, EOS for last-token
pooling) and saved with the tower, so that the ONNX bundle and the service tokenise identically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Encoding, Tokenizer
from torch import nn
from tqdm.auto import tqdm

from scalingnote.artifacts import TOKENIZER_FILE, TOWER_JSON, EncoderConfig, TowerMeta
from scalingnote.choices import Dtype
from scalingnote.errors import ArtifactError
from scalingnote.modeling.pooling import pool
from scalingnote.modeling.st_dir import st_dense, st_max_length, st_pooling, write_st_files
from scalingnote.runtime.tokenization import (
    copy_sidecars,
    json_or_empty,
    length_sorted_batches,
    load_tokenizer,
    pad_encodings,
)
from scalingnote.specs import hf_dim

PROJECTION_FILE = "projection.safetensors"


def is_decoder(config: dict) -> bool:
    return bool(config.get("is_decoder")) or any(a.endswith("ForCausalLM") for a in config.get("architectures", []))


def freeze_input_embeddings(backbone: nn.Module) -> None:
    """Keep a backbone's token-embedding table fixed (most of a small model's parameters)."""
    backbone.get_input_embeddings().weight.requires_grad_(False)


def merged(backbone: nn.Module) -> nn.Module:
    """``backbone`` with LoRA adapters merged into plain weights (unchanged when it has none)."""
    return backbone.merge_and_unload() if hasattr(backbone, "merge_and_unload") else backbone


def default_encoder_config(path: Path) -> EncoderConfig:
    """Pooling and length a plain HF directory implies (sentence-transformers files when present)."""
    decoder = is_decoder(json_or_empty(path / "config.json"))
    pooling = st_pooling(path) or ("last-token" if decoder else "mean")
    return EncoderConfig(pooling=pooling, normalize=True, max_length=st_max_length(path) or 512)


def load_projection(path: Path, hidden: int) -> nn.Linear:
    """A saved tower's projection: ``projection.safetensors``, else its sentence-transformers Dense (a frozen doc
    tower keeps its backbone's weight files only)."""
    if not (path / PROJECTION_FILE).is_file():
        dense = st_dense(path, hidden)
        if dense is None:
            raise ArtifactError(f"{path}: tower.json has a projection, but there is no {PROJECTION_FILE}")
        return dense
    state = load_file(path / PROJECTION_FILE)
    projection = nn.Linear(hidden, state["weight"].shape[0], bias="bias" in state)
    projection.load_state_dict(state)
    return projection


class Tower(nn.Module):
    """Backbone → pooling → optional linear projection → optional L2 normalisation."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Tokenizer,
        pad_id: int,
        meta: TowerMeta,
        projection: nn.Linear | None = None,
        source: Path | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.meta = meta
        self.projection = projection

    @classmethod
    def from_pretrained(
        cls,
        path: Path | str,
        *,
        ident: str | None = None,
        encoder: EncoderConfig | None = None,
        projection_dim: int | None = None,
    ) -> Tower:
        """Load a HF directory or a saved tower.

        A HF directory's sentence-transformers Dense module becomes the projection; ``projection_dim`` adds a
        fresh linear head instead (unless a saved tower has one)."""
        from transformers import AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(path)
        hidden = hf_dim(path)
        if (path / TOWER_JSON).is_file():
            meta = TowerMeta.model_validate(json_or_empty(path / TOWER_JSON))
            if encoder is not None:
                meta.encoder = encoder
            projection = load_projection(path, hidden) if meta.projection else None
        else:
            config = json_or_empty(path / "config.json")
            enc = encoder or default_encoder_config(path)
            projection = st_dense(path, hidden) if projection_dim is None else None
            meta = TowerMeta(
                id=ident or path.name,
                backbone=ident or str(path),
                encoder=enc,
                dim=hidden if projection is None else projection.out_features,
                append_eos=enc.pooling == "last-token" and is_decoder(config),
                projection=projection is not None,
            )
        backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        if projection is None and projection_dim is not None:
            projection = nn.Linear(hidden, projection_dim)
            meta = meta.model_copy(update={"projection": True, "dim": projection_dim})
        tokenizer, pad_id = load_tokenizer(path, meta.encoder.max_length, meta.append_eos)
        return cls(backbone, tokenizer, pad_id, meta, projection, source=path)

    def set_max_length(self, max_length: int) -> None:
        """Change the token budget (truncation) of this tower."""
        self.meta.encoder = self.meta.encoder.model_copy(update={"max_length": max_length})
        self.tokenizer.enable_truncation(max_length)

    @property
    def name(self) -> str:
        return self.meta.id

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def engine(self) -> str:
        return f"torch-{str(self.resolve_dtype('auto')).removeprefix('torch.')}"

    @property
    def static(self) -> bool:
        """No transformer layer: a token table, pooled (a static student)."""
        return getattr(self.backbone.config, "num_hidden_layers", None) == 0

    @property
    def is_llm(self) -> bool:
        return is_decoder(self.backbone.config.to_dict())

    def save(self, path: Path, **updates: object) -> None:
        """Write weights, tokenizer and ``tower.json`` (``updates`` set meta fields such as id/target), and the
        sentence-transformers files that make the directory loadable by ``SentenceTransformer(path)``."""
        path.mkdir(parents=True, exist_ok=True)
        self.meta = self.meta.model_copy(update=updates)
        self.backbone = merged(self.backbone)
        self.backbone.save_pretrained(path)
        self.tokenizer.save(str(path / TOKENIZER_FILE))
        copy_sidecars(self.source, path)
        if self.projection is not None:
            save_file({k: v.contiguous() for k, v in self.projection.state_dict().items()}, path / PROJECTION_FILE)
        (path / TOWER_JSON).write_text(self.meta.model_dump_json(indent=2) + "\n", encoding="utf-8")
        write_st_files(path, self.meta, hf_dim(path), self.projection)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        vec = pool(hidden, attention_mask, self.meta.encoder.pooling)
        if self.projection is not None:
            vec = self.projection(vec.to(self.projection.weight.dtype))
        return F.normalize(vec, dim=-1) if self.meta.encoder.normalize else vec

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        prefix = self.meta.encoder.prefix
        return self.tokenizer.encode_batch([prefix + t for t in texts])

    def batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenised, padded tensors for a training or inference step."""
        ids, mask = pad_encodings(self.tokenize(texts), self.pad_id)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def resolve_dtype(self, dtype: Dtype) -> torch.dtype:
        """``auto``: bf16 autocast for LLM backbones on a GPU, else fp32 (bf16 is slower on CPUs: bench/README)."""
        if dtype == "auto":
            on_gpu = next(self.parameters()).is_cuda
            return torch.bfloat16 if self.is_llm and on_gpu else torch.float32
        return torch.bfloat16 if dtype == "bf16" else torch.float32

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        dtype: Dtype = "auto",
        progress: bool = False,
        desc: str = "encode",
    ) -> np.ndarray:
        """Embed ``texts`` in batches of similar token length (less padding); returns float32 [N, dim]."""
        was_training = self.training
        self.eval()
        encodings = self.tokenize(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        cast = self.resolve_dtype(dtype)
        device = next(self.parameters()).device
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
            for idx in length_sorted_batches(encodings, batch_size):
                ids, mask = pad_encodings([encodings[i] for i in idx], self.pad_id)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cast == torch.bfloat16):
                    vec = self(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
                out[idx] = vec.float().cpu().numpy()
                bar.update(len(idx))
        self.train(was_training)
        return out
