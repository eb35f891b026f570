"""The index build's embedding step on Ray Data: a pool of doc-tower actors, one per GPU (CPU actors here).

The corpus file is read as a Ray dataset (``read_text``, one JSON document per line), parsed, filtered down to
the texts the embedding cache has not seen, and embedded with ``map_batches`` over an actor pool; the driver
writes each batch into the cache as it completes, so a killed job resumes where it stopped. Ray Data restarts
a dead actor and retries its task (``max_restarts`` / ``max_task_retries`` default to -1 for actor pools).
The vectors are then read back in corpus order and the index is built and published as in :mod:`index.build`.

Locally this is ``ray.init()`` on this machine's CPUs; on a cluster, ``address`` (``--ray-address``) is the
only change, and the corpus and the tower directory must be on storage every node sees.
``SCALINGNOTE_FAILPOINT=embed_batch`` makes one actor kill itself (``SIGKILL``) on its first batch, once per
build (the worker-kill test's fault; :func:`failpoint_mark` records that it fired).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from scalingnote.beir import Document
from scalingnote.errors import UserError
from scalingnote.index.embed_cache import EmbeddingCache, text_hash
from scalingnote.index.versions import FAILPOINT_ENV

FAILPOINT = "embed_batch"
START_ATTEMPTS = 3  # a local Ray start: a cold raylet can miss Ray's fixed start-up window (seen in CI-like runs)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray embedding job runs."""

    address: str | None = None  # None: a local Ray on this machine
    actors: int | None = None  # None: one per GPU, else one per ``cpus_per_actor`` CPUs
    cpus_per_actor: int = 1


def failpoint_mark(work: Path) -> Path:
    """The file whose creation fires the ``embed_batch`` failpoint of the build working in ``work``."""
    return work.with_suffix(".failpoint")


def _parse(batch: dict[str, np.ndarray], todo: frozenset[str] | None) -> dict[str, list[str]]:
    """Corpus lines → the texts a doc tower encodes and their hashes, only those in ``todo`` (None: all); the
    driver has validated the file."""
    out: dict[str, list[str]] = {"hash": [], "text": []}
    for line in batch["text"]:
        obj = json.loads(line)
        text = Document(str(obj["_id"]), str(obj.get("title") or ""), str(obj["text"])).full_text
        h = text_hash(text)
        if todo is None or h in todo:
            out["hash"].append(h)
            out["text"].append(text)
    return out


class DocEmbedder:
    """A Ray actor holding one doc tower; embeds a batch of texts."""

    def __init__(
        self,
        tower_path: str,
        ident: str,
        max_length: int,
        batch_size: int,
        dtype: str,
        threads: int,
        fail_once: str | None,
    ):
        import torch

        from scalingnote.modeling.tower import Tower

        torch.set_num_threads(threads)
        self.tower = Tower.from_pretrained(tower_path, ident=ident)
        self.tower.set_max_length(max_length)
        if torch.cuda.is_available():
            self.tower.cuda()
        self.batch_size, self.dtype = batch_size, dtype
        self.fail_once = fail_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail_once is not None:
            try:
                os.close(os.open(self.fail_once, os.O_CREAT | os.O_EXCL))
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:
                pass
        vectors = self.tower.encode(list(batch["text"]), self.batch_size, self.dtype)  # type: ignore[arg-type]
        return {"hash": batch["hash"], "vector": vectors}


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minute of retries, when ``host:port`` (or ``ray://host:port``) is closed."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def connect(options: RayOptions) -> dict[str, float]:
    """Join (or start) the Ray cluster; returns its resources."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install 'scalingnote[scale]'") from None
    if not ray.is_initialized():
        _check_reachable(options.address)
        for attempt in range(START_ATTEMPTS):
            try:
                ray.init(address=options.address, include_dashboard=False, logging_level="WARNING")
                break
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot reach the Ray cluster at {options.address}: {exc}") from None
            except Exception as exc:  # Ray raises a bare Exception when a new raylet misses its fixed 30-s window
                if options.address is not None or "timed out during startup" not in str(exc):
                    raise
                if attempt == START_ATTEMPTS - 1:
                    raise UserError(f"the local Ray node did not start: {exc}") from None
                ray.shutdown()
    return ray.cluster_resources()


def embed_with_ray(
    corpus: Path,
    docs: list[Document],
    tower_path: Path,
    ident: str,
    max_length: int,
    dtype: str,
    cache: EmbeddingCache,
    work: Path,
    batch_size: int,
    shard_size: int,
    options: RayOptions,
    progress: bool,
) -> tuple[np.ndarray, int]:
    """Embed the texts of ``docs`` that ``cache`` lacks on Ray, adding them to ``cache`` batch by batch; returns
    every doc's vector in order and how many texts this run embedded."""
    import ray

    resources = connect(options)
    hashes = [text_hash(d.full_text) for d in docs]
    todo = {h for h in hashes if h not in cache}
    fresh: set[str] = set()
    if todo:
        gpus = int(resources.get("GPU", 0))
        actors = options.actors or gpus or max(1, int(resources.get("CPU", 1)) // options.cpus_per_actor)
        fail = str(failpoint_mark(work)) if os.environ.get(FAILPOINT_ENV) == FAILPOINT else None
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # Reading and parsing hold no CPU slot, or actors holding every CPU would starve them (a deadlock).
        ds = ray.data.read_text(str(Path(corpus).resolve()), num_cpus=0).map_batches(
            _parse,
            fn_kwargs={"todo": frozenset(todo) if len(todo) < len(set(hashes)) else None},
            batch_format="numpy",
            num_cpus=0,
        )
        ds = ds.map_batches(
            DocEmbedder,
            fn_constructor_args=(str(tower_path), ident, max_length, batch_size, dtype, options.cpus_per_actor, fail),
            batch_size=shard_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else None,
            num_cpus=options.cpus_per_actor,
        )
        with tqdm(
            total=len(todo), desc=f"embed corpus (ray, {actors} actors)", unit="doc", disable=not progress
        ) as bar:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                new = [i for i, h in enumerate(out["hash"]) if h not in cache]
                cache.add([str(out["hash"][i]) for i in new], np.asarray(out["vector"])[new])
                fresh.update(str(out["hash"][i]) for i in new)
                bar.update(len(out["hash"]))
    missing = [h for h in hashes if h not in cache]
    if missing:
        raise UserError(f"the Ray job returned no vector for {len(missing)} documents of {corpus}")
    return cache.get(hashes), sum(h in fresh for h in hashes)
