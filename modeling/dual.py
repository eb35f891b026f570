"""Stage-1 teacher: a query tower and a doc tower initialised from one backbone.

By default the two towers hold separate copies of the weights (ScalingNote's asymmetric dual tower); with
``shared=True`` they share backbone and projection but keep their own tokenisation (query/doc lengths,
prefixes). Saved as a dual directory: ``dual.json`` + ``query/`` + ``doc/`` tower dirs, where the query
tower's ``space`` names the doc tower, so only indexes built by ``doc/`` accept its queries.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from scalingnote.artifacts import DUAL_JSON, WEIGHT_SUFFIXES, EmbeddingSpace, EncoderConfig, weights_sha256
from scalingnote.modeling.student import cut_layers, transformer_layers
from scalingnote.modeling.tower import Tower, freeze_input_embeddings, merged
from scalingnote.specs import st_modules


def adopt_backbone_files(tower_dir: Path, backbone: Path) -> None:
    """Replace every weight file under ``tower_dir`` by the backbone's, at the same relative paths, and its
    sentence-transformers modules by the backbone's (a Dense may live in another folder than ours)."""
    for written in [p for p in tower_dir.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]:
        written.unlink()
    for source in [p for p in backbone.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]:
        target = tower_dir / source.relative_to(backbone)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    for _, folder in st_modules(backbone):
        if folder != backbone and folder.is_dir():  # a module without files (Normalize) may have no folder
            shutil.copytree(folder, tower_dir / folder.relative_to(backbone), dirs_exist_ok=True)
    if (backbone / "modules.json").is_file():
        shutil.copyfile(backbone / "modules.json", tower_dir / "modules.json")


class DualTower(nn.Module):
    """Query tower + doc tower; ``forward`` embeds a query batch and a doc batch."""

    def __init__(self, query: Tower, doc: Tower, ident: str, backbone: str, shared: bool) -> None:
        super().__init__()
        self.query = query
        self.doc = doc
        self.ident = ident
        self.backbone_name = backbone
        self.shared = shared

    @classmethod
    def from_backbone(
        cls,
        path: Path | str,
        *,
        ident: str,
        backbone: str,
        query_encoder: EncoderConfig | None = None,
        doc_encoder: EncoderConfig | None = None,
        shared: bool = False,
        layers: int | list[int] | None = None,
    ) -> DualTower:
        """Both towers from the same pretrained weights (copied unless ``shared``), cut to ``layers`` if given."""
        query = Tower.from_pretrained(path, ident=backbone, encoder=query_encoder)
        doc = Tower.from_pretrained(path, ident=backbone, encoder=doc_encoder)
        if layers is not None:
            for tower in (query, doc):
                cut_layers(tower.backbone, layers)
        if shared:
            doc.backbone, doc.projection = query.backbone, query.projection
        for tower in (query, doc):  # BERT's pooler head is unused by our pooling: no grads (DDP requires it)
            if getattr(tower.backbone, "pooler", None) is not None:
                tower.backbone.pooler.requires_grad_(False)
        return cls(query, doc, ident, backbone, shared)

    @classmethod
    def load(cls, path: Path | str) -> DualTower:
        """Reload a saved dual directory (the towers are independent copies on disk)."""
        path = Path(path)
        meta = json.loads((path / DUAL_JSON).read_text(encoding="utf-8"))
        query, doc = Tower.from_pretrained(path / "query"), Tower.from_pretrained(path / "doc")
        if meta.get("shared"):
            doc.backbone, doc.projection = query.backbone, query.projection
        return cls(query, doc, meta["id"], meta.get("backbone", ""), bool(meta.get("shared")))

    def freeze_input_embeddings(self) -> None:
        """Keep the token embedding tables fixed (most of a small LLM's parameters; little to gain on CPU)."""
        for tower in (self.query, self.doc):
            freeze_input_embeddings(tower.backbone)

    def freeze_bottom(self, layers: int) -> None:
        """Keep the embeddings and the first ``layers`` transformer layers of both towers fixed: the backward
        pass then stops above them, which makes a step of a deep backbone cheaper."""
        self.freeze_input_embeddings()
        for tower in (self.query, self.doc):
            for layer in transformer_layers(tower.backbone)[:layers]:
                layer.requires_grad_(False)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass: less memory for longer documents or bigger batches."""
        for tower in (self.query, self.doc):
            tower.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def add_lora(self, rank: int, alpha: int) -> None:
        """Train low-rank adapters on every linear layer instead of the full weights (merged on save)."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", exclude_modules=r".*pooler.*"
        )
        self.query.backbone = get_peft_model(self.query.backbone, config)
        if self.shared:
            self.doc.backbone = self.query.backbone
        else:
            self.doc.backbone = get_peft_model(self.doc.backbone, config)

    def forward(
        self, query_inputs: dict[str, torch.Tensor], doc_inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(**query_inputs), self.doc(**doc_inputs)

    def save(self, path: Path, frozen_doc: Path | None = None) -> EmbeddingSpace:
        """Write ``doc/`` first (its hash names the space), then ``query/`` targeting it, then ``dual.json``.

        ``frozen_doc``: the doc tower was never trained, so its weight files (a sentence-transformers Dense's
        included) are copied from that backbone directory byte for byte, at the same paths: the space is then the
        backbone's own, and so is any index of it."""
        path.mkdir(parents=True, exist_ok=True)
        plain: dict[int, nn.Module] = {}
        for tower in (self.query, self.doc):  # LoRA adapters are merged into plain weights (once if shared)
            tower.backbone = plain.setdefault(id(tower.backbone), merged(tower.backbone))
            if tower.is_llm:  # save_pretrained records the base class (e.g. LlamaModel): keep it known as an LLM
                tower.backbone.config.is_decoder = True
        self.doc.save(path / "doc", id=f"{self.ident}/doc", role="doc", backbone=self.backbone_name)
        if frozen_doc is not None:
            adopt_backbone_files(path / "doc", frozen_doc)
        space = EmbeddingSpace(id=f"{self.ident}/doc", sha256=weights_sha256(path / "doc"), dim=self.doc.dim)
        self.query.save(
            path / "query", id=f"{self.ident}/query", role="query", backbone=self.backbone_name, space=space
        )
        dual = {"id": self.ident, "backbone": self.backbone_name, "shared": self.shared, "space": space}
        (path / DUAL_JSON).write_text(
            json.dumps(dual, indent=2, default=EmbeddingSpace.model_dump) + "\n", encoding="utf-8"
        )
        return space
