"""Artifact contract: atomic publish, checksums, manifest validation, embedding-space guard."""

from pathlib import Path

import pytest

from scalingnote.artifacts import (
    EmbeddingSpace,
    check_space,
    checksums,
    publish_dir,
    read_index_manifest,
    staging_dir,
    verify_checksums,
)
from scalingnote.errors import ArtifactError, SpaceMismatchError


def test_publish_creates_then_swaps_atomically(tmp_path: Path) -> None:
    final = tmp_path / "artifact"
    first = staging_dir(final)
    (first / "v").write_text("1")
    publish_dir(first, final)
    assert (final / "v").read_text() == "1" and not first.exists()
    second = staging_dir(final)
    (second / "v").write_text("2")
    publish_dir(second, final)
    assert (final / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"], "no staging or old dirs are left behind"


def test_checksums_detect_changes(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"abc")
    sums = checksums(tmp_path, ["a.bin"])
    verify_checksums(tmp_path, sums)
    (tmp_path / "a.bin").write_bytes(b"abd")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for a\.bin"):
        verify_checksums(tmp_path, sums)
    (tmp_path / "a.bin").unlink()
    with pytest.raises(ArtifactError, match=r"missing file a\.bin"):
        verify_checksums(tmp_path, sums)


def test_manifest_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        read_index_manifest(tmp_path / "none")
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        read_index_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "scalingnote-index/1"}')
    with pytest.raises(ArtifactError, match="invalid manifest"):
        read_index_manifest(tmp_path)


def test_space_guard() -> None:
    a = EmbeddingSpace(id="teacher/doc", sha256="a" * 64, dim=384)
    check_space(a, EmbeddingSpace(id="renamed", sha256="a" * 64, dim=384))
    with pytest.raises(SpaceMismatchError, match="dim 768 does not match index dim 384"):
        check_space(EmbeddingSpace(id="x", sha256="a" * 64, dim=768), a)
    with pytest.raises(SpaceMismatchError, match="different embedding spaces"):
        check_space(EmbeddingSpace(id="teacher/doc", sha256="b" * 64, dim=384), a)
