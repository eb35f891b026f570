"""Dynamic batching, back-pressure and generation leases, on the real engine (ONNX Runtime + FAISS)."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from scalingnote.artifacts import read_index_manifest
from scalingnote.errors import ArtifactError, SpaceMismatchError, UserError
from scalingnote.index.versions import current_version
from scalingnote.service.batcher import Batcher, Overloaded
from scalingnote.service.engine import Engine
from scalingnote.service.metrics import Metrics
from scalingnote.service.settings import Settings
from tests.conftest import Space, index_root


@pytest.fixture(scope="module")
def engine(tiny: Space) -> Engine:
    return Engine.from_settings(Settings(_env_file=None, bundle=tiny.bundle, index_root=tiny.index))  # type: ignore[call-arg]


QUERIES = [f"gene protein {i} signal pathway" for i in range(10)]


def _batch_counts(metrics: Metrics) -> tuple[float, float]:
    """(number of batches, queries in them) from the batch-size histogram."""
    samples = {s.name: s.value for s in metrics.batch_size.collect()[0].samples}
    return samples["scalingnote_batch_size_count"], samples["scalingnote_batch_size_sum"]


def test_concurrent_requests_share_one_onnx_and_faiss_call(engine: Engine) -> None:
    async def main() -> list:
        batcher = Batcher(engine, metrics, max_batch_size=8, max_wait_us=500_000, max_queue=64)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([q], 3) for q in QUERIES[:8]))
        finally:
            await batcher.stop()

    metrics = Metrics()
    outs = asyncio.run(main())
    assert _batch_counts(metrics) == (1, 8), "8 concurrent requests, one batch"
    alone = engine.run_batch(QUERIES[:8], 3)
    for i, out in enumerate(outs):
        assert [h.id for h in out.hits[0]] == [h.id for h in alone.hits[i]]
        assert np.allclose([h.score for h in out.hits[0]], [h.score for h in alone.hits[i]], atol=1e-5)


def test_batches_are_capped_and_per_request_k_is_kept(engine: Engine) -> None:
    async def main() -> list:
        batcher = Batcher(engine, metrics, max_batch_size=4, max_wait_us=0, max_queue=64)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([q], 1 + i) for i, q in enumerate(QUERIES)))
        finally:
            await batcher.stop()

    metrics = Metrics()
    outs = asyncio.run(main())
    batches, queries = _batch_counts(metrics)
    assert queries == 10 and batches >= 3, "at most 4 queries per batch"
    assert [len(o.hits[0]) for o in outs] == list(range(1, 11))


def test_a_full_queue_refuses_at_once_and_recovers(engine: Engine) -> None:
    async def main() -> tuple[list, object]:
        batcher = Batcher(engine, Metrics(), max_batch_size=1, max_wait_us=0, max_queue=3)
        batcher.start()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(batcher.submit([q], 2) for q in QUERIES), return_exceptions=True), timeout=30
            )
            return results, await batcher.submit(["after the burst"], 2)
        finally:
            await batcher.stop()

    results, after = asyncio.run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 7 and all(r.retry_after >= 1 for r in refused), "3 queued, 7 refused"
    assert len(after.hits[0]) == 2


def test_swapped_out_generation_serves_its_in_flight_batch_then_is_released(
    engine: Engine, tiny: Space, second_corpus: Path, tmp_path: Path
) -> None:
    from scalingnote.index.build import build_index

    build_index(second_corpus, str(tiny.model), tmp_path / "v2", progress=False)
    root = index_root(tmp_path / "root", tiny.index)
    eng = Engine(engine.encoder, root)
    old = eng.current
    entered, leave = threading.Event(), threading.Event()

    def in_flight() -> None:
        with eng.lease() as gen:
            entered.set()
            leave.wait(10)
            assert gen.index is not None and gen.index.search(np.ones((1, 32), np.float32), 1)[1][0, 0] >= 0

    t = threading.Thread(target=in_flight)
    t.start()
    entered.wait(10)
    index_root(root, tmp_path / "v2")
    assert eng.reload() is not None
    assert eng.current.version == read_index_manifest(tmp_path / "v2").version == current_version(root)
    assert eng.run_batch(["gene"], 1).version == eng.current.version, "new batches use the new index"
    assert not old.released.is_set() and old.index is not None, "kept while a batch still holds it"
    leave.set()
    t.join()
    assert old.released.is_set() and old.index is None


def test_reload_rejects_mismatched_or_corrupt_index_and_keeps_serving(
    engine: Engine, tiny: Space, other_space: Space, tmp_path: Path
) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    eng = Engine(engine.encoder, root)
    serving = eng.current.version
    index_root(root, other_space.index)
    with pytest.raises(SpaceMismatchError, match="different embedding spaces"):
        eng.reload()
    assert eng.current.version == serving and eng.run_batch(["gene"], 1).version == serving

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny.index, corrupt)
    manifest = read_index_manifest(corrupt)
    (corrupt / "manifest.json").write_text(
        manifest.model_copy(update={"version": "29990101T000000Z-c0ffee"}).model_dump_json()
    )
    index_root(root, corrupt)
    (root / "versions" / "29990101T000000Z-c0ffee" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        eng.reload()
    with pytest.raises(UserError, match="not found"):
        eng.reload("20000101T000000Z-absent")
    assert eng.current.version == serving and eng.run_batch(["gene"], 1).version == serving
