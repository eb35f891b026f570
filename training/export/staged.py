"""A bundle being built in its staging directory: its variants and gate figures, and ``bundle.json`` kept current."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scalingnote.artifacts import BUNDLE_MANIFEST, BundleManifest, EmbeddingSpace, checksums, now_iso, write_manifest
from scalingnote.modeling.tower import Tower


@dataclass
class StagedBundle:
    """``bundle.json`` is rewritten on every change, so a variant can be opened (and gated) as soon as it is added."""

    tmp: Path
    tower: Tower
    space: EmbeddingSpace
    teacher: str
    variants: dict[str, str] = field(default_factory=lambda: {"fp32": "model.onnx"})
    gates: dict[str, float] = field(default_factory=dict)

    def write(self) -> BundleManifest:
        manifest = BundleManifest(
            name=self.tower.meta.id,
            teacher_id=self.teacher,
            space=self.space,
            encoder=self.tower.meta.encoder,
            dim=self.tower.dim,
            architecture="static" if self.tower.static else "transformer",
            variants=dict(self.variants),
            gates=dict(self.gates),
            created_at=now_iso(),
            files=checksums(self.tmp, sorted(p.name for p in self.tmp.iterdir() if p.name != BUNDLE_MANIFEST)),
        )
        write_manifest(self.tmp, BUNDLE_MANIFEST, manifest)
        return manifest

    def add(self, variant: str, filename: str) -> None:
        self.variants[variant] = filename
        self.write()

    def drop(self, variant: str) -> None:
        (self.tmp / self.variants.pop(variant)).unlink()
        self.write()
