"""Latency SLO: a real server on 127.0.0.1 with a real bundle and index, fixed-rate load from real queries.

The SLO and rate come from :class:`SloSettings` (``SCALINGNOTE_SLO_P99_MS``, ``SCALINGNOTE_SLO_RATE``,
``SCALINGNOTE_SLO_DURATION_S``). Their defaults are CI's loose bound (order-of-magnitude regressions). The server's
admission budget (``QUEUE_BUDGET_MS``) is set to the SLO asserted, as an operator sets it from theirs: a budget
tighter than the SLO would refuse (429) requests the SLO allows on a slower machine. Arrivals are evenly
spaced: a regression bound with a fixed request count (bench/serve measures Poisson and bursts). The
target (p99 <= 10 ms at 300 req/s for 60 s with the distilled student) is checked by setting them, see
service/README.md. Artifacts: ``SCALINGNOTE_SLO_BUNDLE`` / ``SCALINGNOTE_SLO_INDEX`` if set, else the repo's
``artifacts/bundle-minilm`` + ``artifacts/minilm-scifact`` if present, else both are built here: an index of the
first 1,000 SciFact docs by all-MiniLM-L6-v2 and a bundle of the served student's shape, layers 0, 2, 4, 5 of it
(untrained; int8 where its gate passes), about a minute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from scalingnote.paths import data_root
from tests.conftest import REPO

pytestmark = pytest.mark.slo

SUBSET_DOCS = 1000
STUDENT_LAYERS = [0, 2, 4, 5]


class SloSettings(BaseSettings):
    """What this test asserts; the defaults are CI's loose bound."""

    model_config = SettingsConfigDict(env_prefix="SCALINGNOTE_", extra="ignore")

    slo_p99_ms: float = Field(250.0, gt=0, description="p99 latency bound asserted.")
    slo_rate: float = Field(100.0, gt=0, description="Fixed request rate, req/s.")
    slo_duration_s: float = Field(20.0, gt=0, description="Seconds of load.")


@pytest.fixture(scope="module")
def real_artifacts(scifact: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, index): from the environment, the repo's artifacts/, or built from minilm-l6 (a student-shaped cut)."""
    env_bundle, env_index = os.environ.get("SCALINGNOTE_SLO_BUNDLE"), os.environ.get("SCALINGNOTE_SLO_INDEX")
    if env_bundle and env_index:
        return Path(env_bundle).resolve(), Path(env_index).resolve()
    bundle, index = REPO / "artifacts" / "bundle-minilm", REPO / "artifacts" / "minilm-scifact"
    if (bundle / "bundle.json").is_file() and (index / "manifest.json").is_file():
        return bundle, index
    from scalingnote.beir import load_queries
    from scalingnote.index.build import build_index
    from scalingnote.modeling.student import cut_layers
    from scalingnote.modeling.tower import Tower
    from scalingnote.specs import builtin_path, doc_space, resolve
    from scalingnote.training.export import export_bundle

    work = tmp_path_factory.mktemp("slo")
    subset = work / "scifact-subset"
    subset.mkdir()
    with (scifact / "corpus.jsonl").open(encoding="utf-8") as src:
        (subset / "corpus.jsonl").write_text("".join(line for _, line in zip(range(SUBSET_DOCS), src, strict=False)))
    build_index(subset, "minilm-l6", work / "index", progress=False)
    # the served student's shape and cost (the demo's: layers 0, 2, 4, 5 of MiniLM-L6, int8 where its gate passes),
    # untrained: this test measures the serving stack, not ranking
    tower = Tower.from_pretrained(builtin_path("minilm-l6"), ident="minilm-l6")
    cut_layers(tower.backbone, STUDENT_LAYERS)
    space = doc_space(resolve("minilm-l6"))
    tower.save(work / "tower", id="slo-student-shape", role="query", space=space, teacher="minilm-l6")
    queries = list(load_queries(scifact / "queries.jsonl").values())[:256]
    export_bundle(str(work / "tower"), work / "bundle", index_dir=work / "index", queries=queries, log=lambda *_: None)
    return work / "bundle", work / "index"


@pytest.fixture(scope="module")
def query_bodies(loadgen: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = data_root() / loadgen.MSMARCO_QUERIES
    assert path.is_file(), f"SLO queries missing: {path} (set SCALINGNOTE_DATA_DIR)"
    queries = loadgen.read_queries(path)
    assert len(queries) > 1000
    return loadgen.write_bodies(tmp_path_factory.mktemp("bodies") / "search.jsonl", [{"query": q} for q in queries])


def test_p99_within_the_slo_at_a_fixed_rate(
    real_artifacts: tuple[Path, Path], query_bodies: Path, loadgen: ModuleType, serve
) -> None:
    slo = SloSettings()
    bundle, index = real_artifacts
    with serve(bundle, index, queue_budget_ms=slo.slo_p99_ms) as server:
        loadgen.run(loadgen.BINARY, server.port, query_bodies, concurrency=4, duration=3)  # warm-up
        run = loadgen.run(
            loadgen.BINARY, server.port, query_bodies, rate=slo.slo_rate, duration=slo.slo_duration_s, arrivals="even"
        )
    stats = run.stats()
    print(json.dumps(stats | {"slo_p99_ms": slo.slo_p99_ms}))
    assert stats["requests"] == int(slo.slo_rate * slo.slo_duration_s)
    assert run.failed == 0, stats
    assert stats["latency_ms"]["p99"] <= slo.slo_p99_ms, stats


def test_batch_endpoint_within_the_slo(
    real_artifacts: tuple[Path, Path], query_bodies: Path, loadgen: ModuleType, serve, tmp_path: Path
) -> None:
    """Eight queries per request at an eighth of the rate: the same query throughput through /search/batch."""
    slo = SloSettings()
    queries = [json.loads(line)["query"] for line in query_bodies.read_text().splitlines()[:4000]]
    bodies = loadgen.write_bodies(
        tmp_path / "batch.jsonl", [{"queries": queries[i : i + 8]} for i in range(0, 4000, 8)]
    )
    bundle, index = real_artifacts
    with serve(bundle, index, queue_budget_ms=slo.slo_p99_ms * 4) as server:
        run = loadgen.run(
            loadgen.BINARY,
            server.port,
            bodies,
            path="/search/batch",
            rate=slo.slo_rate / 8,
            duration=slo.slo_duration_s,
            arrivals="even",
        )
    stats = run.stats()
    assert run.failed == 0, stats
    assert stats["latency_ms"]["p99"] <= slo.slo_p99_ms * 4, stats
