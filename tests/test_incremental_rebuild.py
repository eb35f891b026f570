"""Incremental rebuilds: the document-level embedding cache beside an index root (issue #11, part 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from scalingnote.index import versions
from scalingnote.index.build import build_index
from scalingnote.index.embed_cache import COMPACT_RATIO, EmbeddingCache
from scalingnote.modeling.tower import Tower
from tests.conftest import Space, run_cli, write_corpus


def _edit(corpus: Path, change: int, drop: int, add: int) -> Path:
    """Change the text of the first ``change`` docs, drop the next ``drop``, append ``add`` new ones."""
    rows = [json.loads(line) for line in (corpus / "corpus.jsonl").read_text().splitlines()]
    for row in rows[:change]:
        row["text"] += " revised"
    rows = rows[:change] + rows[change + drop :]
    rows += [{"_id": f"new-{i}", "title": "", "text": f"a new document {i} on insulin"} for i in range(add)]
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return corpus


def _vectors(index: Path) -> np.ndarray:
    flat = faiss.read_index(str(index / "index.faiss"))
    return flat.reconstruct_n(0, flat.ntotal)


def test_a_rebuild_embeds_only_new_and_changed_documents(tiny: Space, tmp_path: Path, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "corpus", 40, seed=7)
    root = tmp_path / "root"
    first = versions.rebuild(root, corpus, str(tiny.model), progress=False)
    assert first.vectors is not None and (first.vectors.embedded, first.vectors.reused) == (40, 0)
    assert first.vectors.dropped is None, "no previous version to drop from"

    _edit(corpus, change=2, drop=3, add=4)
    encoded: list[str] = []
    real = Tower.encode

    def counting(self, texts, *args, **kwargs):
        encoded.extend(texts)
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(Tower, "encode", counting)
    second = versions.rebuild(root, corpus, str(tiny.model), progress=False)
    monkeypatch.undo()
    assert second.vectors is not None
    assert (second.vectors.embedded, second.vectors.reused, second.vectors.dropped) == (6, 35, 3)
    assert len(encoded) == 6 and all("revised" in t or "new document" in t for t in encoded)
    assert (root / versions.EMBEDDINGS).is_dir(), "the cache survives the successful build"

    full = build_index(corpus, str(tiny.model), tmp_path / "full", progress=False)  # no cache
    assert full.vectors is not None and full.vectors.embedded == 41
    got, want = _vectors(versions.current_path(root)), _vectors(tmp_path / "full")
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert got.shape == want.shape and cosine.min() >= 0.9999
    assert json.loads((versions.current_path(root) / "docs.json").read_text()) == json.loads(
        (tmp_path / "full" / "docs.json").read_text()
    )


def test_another_doc_tower_or_length_never_reuses_vectors(tiny: Space, other_space: Space, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", 20, seed=8)
    root = tmp_path / "root"
    versions.rebuild(root, corpus, str(tiny.model), progress=False)
    shorter = versions.rebuild(root, corpus, str(tiny.model), max_length=16, progress=False)
    other = versions.rebuild(root, corpus, str(other_space.model), force=True, progress=False)
    for manifest in (shorter, other):
        assert manifest.vectors is not None and manifest.vectors.embedded == 20 and manifest.vectors.reused == 0


def test_the_cache_is_compacted_once_mostly_garbage(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "key")
    rows = int(COMPACT_RATIO * 10) + 1
    cache.add([f"h{i}" for i in range(rows)], np.arange(rows * 4, dtype=np.float32).reshape(rows, 4))
    assert not cache.compact([f"h{i}" for i in range(rows)]), "all rows in use: nothing to do"
    assert cache.compact([f"h{i}" for i in range(10)])
    reopened = EmbeddingCache(tmp_path, "key")
    assert len(reopened) == 10 and len(list((tmp_path / "key").glob("*.npy"))) == 1
    np.testing.assert_array_equal(reopened.get(["h3", "h0"]), [[12, 13, 14, 15], [0, 1, 2, 3]])


def test_a_killed_build_keeps_the_parts_it_finished(tiny: Space, tmp_path: Path, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "corpus", 30, seed=9)
    real, calls = Tower.encode, []

    def dies_on_the_third_shard(self, texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(Tower, "encode", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, str(tiny.model), tmp_path / "out", shard_size=10, embed_cache=tmp_path / "cache",
                    progress=False)  # fmt: skip
    monkeypatch.undo()
    shutil.rmtree(tmp_path / ".out.partial")  # even without the resumable shards
    again = build_index(corpus, str(tiny.model), tmp_path / "out", shard_size=10, embed_cache=tmp_path / "cache",
                        progress=False)  # fmt: skip
    assert again.vectors is not None and (again.vectors.embedded, again.vectors.reused) == (10, 20)


def test_rebuild_cli_reports_the_counts_and_can_skip_the_cache(tiny: Space, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", 12, seed=10)
    root = tmp_path / "root"
    args = ["index", "rebuild", "--dataset", str(corpus), "--doc-encoder", str(tiny.model), "--root", str(root)]
    proc = run_cli(*args)
    assert proc.returncode == 0 and "(12 embedded, 0 reused, None dropped)" in proc.stdout, proc.stderr
    proc = run_cli(*args)
    assert proc.returncode == 0 and "(0 embedded, 12 reused, 0 dropped)" in proc.stdout, proc.stderr
    proc = run_cli(*args, "--no-embed-cache")
    assert proc.returncode == 0 and "(12 embedded, 0 reused, 0 dropped)" in proc.stdout, proc.stderr
