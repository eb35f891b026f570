"""Build an index directory: embed a corpus with a doc tower, shard by shard, then publish atomically.

Embedding shards are saved in ``.<out>.partial/`` as they are made, so a killed build resumes from the
last finished shard. With an embedding cache (:mod:`index.embed_cache`; ``index rebuild`` keeps one beside
its root) only documents whose text the cache has not seen with this doc tower are embedded. ``--out`` only
ever appears complete: the index is written to a staging dir and renamed into place (an existing index is
swapped atomically).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from scalingnote.artifacts import (
    DOCS_FILE,
    INDEX_FILE,
    INDEX_MANIFEST,
    TOWER_JSON,
    EmbeddingSpace,
    EncoderConfig,
    IndexManifest,
    TowerMeta,
    VectorCounts,
    checksums,
    new_version_id,
    now_iso,
    publish_dir,
    read_index_manifest,
    sha256_file,
    staging_dir,
    write_manifest,
)
from scalingnote.beir import Document, load_corpus, load_queries
from scalingnote.choices import Runtime, runtime_key
from scalingnote.errors import DatasetError, UserError
from scalingnote.index import ann_tuning, faiss_backend
from scalingnote.index.docstore import DOCSTORE_FILE, write_docstore
from scalingnote.index.embed_cache import EmbeddingCache, text_hash
from scalingnote.index.lexical import Lexical
from scalingnote.index.ray_build import RayOptions, embed_with_ray
from scalingnote.modeling.onnx_tower import OnnxTower, encoder_for
from scalingnote.modeling.tower import Dtype, Tower, default_encoder_config
from scalingnote.paths import index_cache_root
from scalingnote.specs import EncoderRef, doc_space, resolve


def _fingerprint(docs: list[Document], parts: list[str]) -> str:
    h = hashlib.sha256("\x1f".join(parts).encode())
    for d in docs:
        h.update(d.id.encode() + b"\x1e" + d.full_text.encode() + b"\x1d")
    return h.hexdigest()


def work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _embed_chunk(
    tower: Tower | OnnxTower, chunk: list[Document], cache: EmbeddingCache | None, batch_size: int, dtype: Dtype
) -> tuple[np.ndarray, int]:
    """The chunk's vectors and how many documents had to be embedded (the rest came from ``cache``)."""
    texts = [d.full_text for d in chunk]
    if cache is None:
        return tower.encode(texts, batch_size, dtype, progress=False), len(chunk)
    hashes = [text_hash(t) for t in texts]
    missing = {h: t for h, t in zip(hashes, texts, strict=True) if h not in cache}
    if missing:
        cache.add(list(missing), tower.encode(list(missing.values()), batch_size, dtype, progress=False))
    return cache.get(hashes), sum(h in missing for h in hashes)


def embed_shards(
    tower: Tower | OnnxTower,
    docs: list[Document],
    work: Path,
    key: str,
    shard_size: int,
    batch_size: int,
    dtype: Dtype,
    progress: bool,
    cache: EmbeddingCache | None = None,
) -> tuple[np.ndarray, int]:
    """Embed ``docs`` shard by shard into ``work``, reusing shards a previous run of the same ``key`` left and
    vectors ``cache`` holds; returns the vectors and how many documents were embedded by this run."""
    if (work / "key").is_file() and (work / "key").read_text() != key:
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True, exist_ok=True)
    (work / "key").write_text(key)
    n_shards = (len(docs) + shard_size - 1) // shard_size
    parts: list[np.ndarray] = []
    embedded = 0
    with tqdm(total=len(docs), desc="embed corpus", unit="doc", disable=not progress) as bar:
        for i in range(n_shards):
            shard = work / "shards" / f"{i:05d}.npy"
            chunk = docs[i * shard_size : (i + 1) * shard_size]
            if shard.is_file():
                vectors = np.load(shard)
            else:
                vectors, n = _embed_chunk(tower, chunk, cache, batch_size, dtype)
                embedded += n
                tmp = shard.with_suffix(".tmp.npy")
                np.save(tmp, vectors)
                os.replace(tmp, shard)
            parts.append(vectors)
            bar.update(len(chunk))
    return np.concatenate(parts), embedded


def _embed_on_ray(
    dataset: Path,
    docs: list[Document],
    ref: EncoderRef,
    tower: Tower,
    dtype: Dtype,
    cache: EmbeddingCache | None,
    work: Path,
    options: RayOptions,
    sizes: tuple[int, int],
    progress: bool,
) -> tuple[np.ndarray, int]:
    """:func:`index.ray_build.embed_with_ray` with this build's tower settings; without an embedding cache the
    build keeps its own in the work dir (so a killed Ray build resumes too)."""
    work.mkdir(parents=True, exist_ok=True)
    if cache is None:
        cache = EmbeddingCache(work / "embeddings", "build")
    resolved = "bf16" if tower.resolve_dtype(dtype) == torch.bfloat16 else "fp32"
    corpus, path, length = dataset / "corpus.jsonl", ref.tower_path("doc"), tower.meta.encoder.max_length
    return embed_with_ray(corpus, docs, path, ref.id, length, resolved, cache, work, *sizes, options, progress)


def _embed(
    dataset: Path,
    docs: list[Document],
    ref: EncoderRef,
    tower: Tower,
    work: Path,
    key: str,
    cache: EmbeddingCache | None,
    *,
    ray: RayOptions | None,
    runtime: Runtime,
    dtype: Dtype,
    sizes: tuple[int, int],
    progress: bool,
) -> tuple[np.ndarray, int]:
    """The corpus's vectors and how many were embedded: in this process (on ``runtime``), or on Ray (torch)."""
    if ray is None:
        encoder = encoder_for(tower, runtime)
        return embed_shards(encoder, docs, work, key, sizes[1], sizes[0], dtype, progress, cache)
    if runtime != "torch":
        raise UserError("the onnx runtime embeds in this process: leave out --engine ray, or use --runtime torch")
    return _embed_on_ray(dataset, docs, ref, tower, dtype, cache, work, ray, sizes, progress)


def _tuning_queries(
    dataset: Path, ref: EncoderRef, doc_tower: Tower, path: Path | None, vectors: np.ndarray, dtype: Dtype
) -> tuple[np.ndarray, str]:
    """Held-out query vectors for a recall target (:func:`index.ann_tuning.tune` samples them): ``path`` (or the
    dataset's queries.jsonl) embedded by the query tower (the doc tower for a shared one), else the corpus's own."""
    path = path or (dataset / "queries.jsonl" if (dataset / "queries.jsonl").is_file() else None)
    if path is None:
        return vectors, "documents sampled from the corpus"
    texts = list(load_queries(Path(path)).values())
    rows = faiss_backend.sample_rows(len(texts), ann_tuning.TUNE_QUERIES)  # embed only what tuning uses
    texts = texts[rows] if isinstance(rows, slice) else [texts[i] for i in rows]
    tower = Tower.from_pretrained(ref.tower_path("query"), ident=ref.id) if ref.kind == "dual" else doc_tower
    return tower.encode(texts, 64, dtype), str(path)


def _publish(
    vectors: np.ndarray,
    docs: list[Document],
    out: Path,
    factory: str,
    space: EmbeddingSpace,
    enc: EncoderConfig,
    dataset: Path,
    counts: VectorCounts,
    recall: tuple[float, np.ndarray, str] | None = None,
    bm25: bool = False,
) -> IndexManifest:
    """Build the FAISS index of ``vectors`` and publish it with its doc list, document store (and with ``bm25``
    a BM25 index) and manifest at ``out``; ``recall`` (target, held-out query vectors, their source) picks and
    records its search parameters."""
    index = faiss_backend.build(vectors, factory)
    search = None if recall is None else ann_tuning.tune(index, vectors, recall[1], recall[0], recall[2])
    tmp = staging_dir(out)
    faiss.write_index(index, str(tmp / INDEX_FILE))
    docs_json = {"ids": [d.id for d in docs], "titles": [d.title for d in docs]}
    (tmp / DOCS_FILE).write_text(json.dumps(docs_json, ensure_ascii=False), encoding="utf-8")
    write_docstore(tmp / DOCSTORE_FILE, docs)
    files = [INDEX_FILE, DOCS_FILE, DOCSTORE_FILE]
    if bm25:
        files += Lexical.build([d.full_text for d in docs]).save(tmp)
    manifest = IndexManifest(
        version=new_version_id(),
        space=space,
        encoder=enc,
        count=index.ntotal,
        factory=factory,
        dataset=str(dataset.resolve()),
        created_at=now_iso(),
        files=checksums(tmp, files),
        vectors=counts,
        search=search,
    )
    write_manifest(tmp, INDEX_MANIFEST, manifest)
    publish_dir(tmp, out)
    return manifest


def build_index(
    dataset: Path,
    doc_encoder: str,
    out: Path,
    factory: str = "Flat",
    batch_size: int = 64,
    shard_size: int = 1024,
    dtype: Dtype = "auto",
    progress: bool = True,
    tower: Tower | None = None,
    max_length: int | None = None,
    embed_cache: Path | None = None,
    previous_ids: list[str] | None = None,
    ray: RayOptions | None = None,
    recall_target: float | None = None,
    tune_queries: Path | None = None,
    bm25: bool = False,
    runtime: Runtime = "torch",
) -> IndexManifest:
    """Embed ``dataset/corpus.jsonl`` with the doc side of ``doc_encoder`` and publish an index at ``out``
    (with ``bm25``, a BM25 index beside it, for the bm25 and hybrid modes).

    ``embed_cache``: the embedding cache root (vectors of unchanged texts are reused); ``previous_ids``: the
    documents of the version this one replaces, to count the dropped ones in the manifest; ``ray``: embed on
    Ray Data (:mod:`index.ray_build`) instead of in this process; ``recall_target``: choose the ANN search
    parameters that reach this recall@10 on ``tune_queries`` (:mod:`index.ann_tuning`); ``runtime``: ``onnx``
    embeds on ONNX Runtime (fp32, checked against torch; :mod:`modeling.onnx_tower`)."""
    dataset, out = Path(dataset), Path(out)
    if not dataset.is_dir():
        raise DatasetError(f"dataset directory not found: {dataset}")
    docs = list(load_corpus(dataset / "corpus.jsonl").values())
    ref = resolve(doc_encoder)
    space = doc_space(ref)
    if tower is None:
        tower = Tower.from_pretrained(ref.tower_path("doc"), ident=ref.id)
    if max_length is not None:
        tower.set_max_length(max_length)
    enc = tower.meta.encoder
    embedding = [space.sha256, enc.model_dump_json(), str(tower.resolve_dtype(dtype))]  # what a vector depends on
    embedding += runtime_key(runtime)
    key = _fingerprint(docs, [*embedding, str(shard_size)])
    work = work_dir(out)
    tower_key = hashlib.sha256("\x1f".join(embedding).encode()).hexdigest()[:24]
    cache = None if embed_cache is None else EmbeddingCache(embed_cache, tower_key)
    how = {"ray": ray, "runtime": runtime, "dtype": dtype, "sizes": (batch_size, shard_size), "progress": progress}
    vectors, embedded = _embed(dataset, docs, ref, tower, work, key, cache, **how)
    counts = VectorCounts(
        embedded=embedded,
        reused=len(docs) - embedded,
        dropped=None if previous_ids is None else len(set(previous_ids) - {d.id for d in docs}),
    )
    recall = None
    if recall_target is not None:
        recall = (recall_target, *_tuning_queries(dataset, ref, tower, tune_queries, vectors, dtype))
    manifest = _publish(vectors, docs, out, factory, space, enc, dataset, counts, recall, bm25)
    shutil.rmtree(work, ignore_errors=True)
    if cache is not None:
        cache.compact([text_hash(d.full_text) for d in docs])
    return manifest


def cached_index(
    dataset: Path, doc_encoder: str, out: Path, max_length: int | None = None, **build_kwargs: object
) -> IndexManifest:
    """``doc_encoder``'s index of ``dataset`` at ``out``, built once into the shared cache and hard-linked from
    there: an index depends only on the doc tower's weights and encoder config, the corpus and the factory.

    For the indexes several runs share: off-the-shelf baselines, and teachers whose doc tower stayed frozen. With
    ``bm25``, the BM25 side is built for ``out`` alone (seconds), so the dense files are still shared."""
    bm25 = bool(build_kwargs.pop("bm25", False))
    dataset, out = Path(dataset), Path(out)
    if not (dataset / "corpus.jsonl").is_file():
        raise DatasetError(f"dataset directory not found or without corpus.jsonl: {dataset}")
    ref = resolve(doc_encoder)
    space, encoder = doc_space(ref), doc_encoder_config(ref, max_length)
    parts = [space.sha256, encoder.model_dump_json(), sha256_file(dataset / "corpus.jsonl")]
    parts += [str(build_kwargs.get(name, default)) for name, default in (("factory", "Flat"), ("dtype", "auto"))]
    parts += runtime_key(build_kwargs.get("runtime", "torch"))  # type: ignore[arg-type]
    parts += [DOCSTORE_FILE]  # the layout: the files it holds
    key = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
    cached = index_cache_root() / key
    try:
        manifest = read_index_manifest(cached, verify=True)
    except UserError:
        manifest = build_index(dataset, doc_encoder, cached, max_length=max_length, **build_kwargs)  # type: ignore[arg-type]
    tmp = staging_dir(out)
    for name in manifest.files:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(cached / name, tmp / name)
        except OSError:  # another filesystem: copy instead
            shutil.copyfile(cached / name, tmp / name)
    files = dict(manifest.files)
    if bm25:
        corpus = load_corpus(dataset / "corpus.jsonl")
        ids = json.loads((tmp / DOCS_FILE).read_text(encoding="utf-8"))["ids"]
        files |= checksums(tmp, Lexical.build([corpus[i].full_text for i in ids]).save(tmp))
    update = {"space": space, "created_at": now_iso(), "files": files}  # this tower's own id
    manifest = manifest.model_copy(update=update)
    write_manifest(tmp, INDEX_MANIFEST, manifest)
    publish_dir(tmp, out)
    return manifest


def doc_encoder_config(ref: EncoderRef, max_length: int | None = None) -> EncoderConfig:
    """How the doc side of ``ref`` embeds text (its tower.json, else what a plain HF directory implies)."""
    path = ref.tower_path("doc")
    meta = path / TOWER_JSON
    encoder = (
        TowerMeta.model_validate_json(meta.read_text()).encoder if meta.is_file() else default_encoder_config(path)
    )
    return encoder if max_length is None else encoder.model_copy(update={"max_length": max_length})
