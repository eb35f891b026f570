"""The Milvus serving backend on real Milvus Lite: FAISS's top-10, alias swaps under load, space guard, rollback.

Cross-process tests share a Milvus Lite gRPC server (``python -m milvus_lite server``, one per module: a Lite
``.db`` file opens in one process only); each test works under its own alias.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from scalingnote.errors import BackendError
from scalingnote.index import milvus_backend, versions
from scalingnote.index.docstore import Filter
from scalingnote.index.milvus_backend import MilvusIndex, MilvusStore, collection_name
from scalingnote.index.query import SearchSpec
from scalingnote.index.store import LoadedIndex
from scalingnote.service.app import create_app
from scalingnote.service.settings import Settings
from tests.conftest import (
    REPO,
    SCALINGNOTE,
    Space,
    assert_swap_under_load,
    free_port,
    index_root,
    run_cli,
    server_env,
)
from tests.test_faults_index import copy_as_version
from tests.test_hybrid_filters import FILTERS
from tests.test_hybrid_filters import meta_space as meta_space  # a fixture

API_KEY = "milvus-test-key-0123456789abcdef0123"
ADMIN = {"X-API-Key": API_KEY}
V1, V2, V3 = "20000101T000000Z-aaaaa1", "20000102T000000Z-bbbbb2", "20000103T000000Z-ccccc3"


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus Lite server process on a free loopback port, for the test, the CLI and the service processes."""
    data, port = tmp_path_factory.mktemp("milvus"), free_port()
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data / "db"), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    with (data / "server.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                milvus_backend.connect(uri)
                break
            except BackendError:
                assert proc.poll() is None and time.monotonic() < deadline, (data / "server.log").read_text()
                time.sleep(0.1)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def store(milvus_uri: str) -> MilvusStore:
    """This test's own alias on the shared server."""
    return MilvusStore.connect(milvus_uri, f"t_{uuid.uuid4().hex[:8]}")


def _ids(rows: list) -> list[list[str]]:
    return [[h.id for h in row] for row in rows]


def test_milvus_and_faiss_flat_give_the_same_top10(tiny: Space, store: MilvusStore, tmp_path: Path) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    name = store.sync(root)
    faiss_index, milvus = LoadedIndex.load(tiny.index), MilvusIndex.open(store.client, store.resolve())
    version = faiss_index.manifest.version
    assert name == store.resolve() == collection_name(store.alias, version)
    props = store.client.describe_collection(name)["properties"]
    assert props[milvus_backend.VERSION_KEY] == version
    assert props[milvus_backend.SPACE_KEY] == faiss_index.manifest.space.sha256
    assert milvus.manifest == faiss_index.manifest
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((30, faiss_index.dim)).astype(np.float32)
    queries = np.vstack([queries / np.linalg.norm(queries, axis=1, keepdims=True), faiss_index.vectors()[:5]])
    expected, got = faiss_index.hits(queries, 10), milvus.hits(queries, 10)
    assert _ids(got) == _ids(expected)
    for want, have in zip(expected, got, strict=True):
        assert [h.score for h in have] == pytest.approx([h.score for h in want], abs=1e-5)
        assert [h.title for h in have] == [h.title for h in want]
    assert len(milvus.hits(queries[:1], 1000)[0]) == faiss_index.manifest.count == 200


def test_space_mismatch_is_refused_and_the_old_collection_serves_on(
    tiny: Space, other_space: Space, store: MilvusStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    store.sync(root)
    serving = versions.current_version(root)
    settings = Settings(
        _env_file=None, bundle=tiny.bundle, backend="milvus", milvus_uri=store.uri, milvus_alias=store.alias,
        api_key=API_KEY, reload_poll_seconds=0,
    )  # type: ignore[call-arg]  # fmt: skip
    with TestClient(create_app(settings)) as c:
        assert c.post("/search", json={"query": "gene risk", "k": 3}).json()["index_version"] == serving
        other = versions.publish_version(other_space.index, root).version  # a version of another doc tower
        assert store.sync(root) == store.resolve() == collection_name(store.alias, other)
        r = c.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 409 and "different embedding spaces" in r.json()["message"], r.text
        assert serving in r.json()["message"]
        assert f"index reload rejected, still serving {serving}" in caplog.text
        assert c.post("/search", json={"query": "gene risk", "k": 3}).json()["index_version"] == serving
        assert c.get("/admin/index", headers=ADMIN).json() == {
            "index_version": serving, "docs": 200, "versions": sorted([serving, other]),
        }  # fmt: skip
        r = c.post("/admin/rollback", headers=ADMIN)
        assert r.status_code == 409 and "index rollback --backend milvus" in r.json()["message"], r.text


def test_rollback_repoints_the_alias_and_collections_go_with_their_versions(
    tiny: Space, store: MilvusStore, tmp_path: Path
) -> None:
    root = index_root(tmp_path / "root", *(copy_as_version(tiny.index, tmp_path / v, v) for v in (V1, V2)))
    store.sync(root)
    milvus = ("--backend", "milvus", "--milvus-uri", store.uri, "--milvus-alias", store.alias)
    done = run_cli("index", "rollback", "--root", str(root), *milvus, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"alias {store.alias} -> {collection_name(store.alias, V1)}" in done.stdout
    assert versions.current_version(root) == V1 and store.resolve() == collection_name(store.alias, V1)
    v3 = copy_as_version(tiny.index, tmp_path / V3, V3)
    done = run_cli("index", "publish", "--index", str(v3), "--root", str(root), "--keep", "2", *milvus, timeout=120)
    assert done.returncode == 0, done.stderr
    assert versions.list_versions(root) == [V2, V3] and store.resolve() == collection_name(store.alias, V3)
    assert list(store.collections()) == [V2, V3], "V1's collection was dropped with its version"


def test_milvus_misconfiguration_is_a_one_line_error(
    tiny: Space, milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve = [str(SCALINGNOTE), "serve", "--bundle", str(tiny.bundle), "--port", "0"]
    unreachable = f"http://127.0.0.1:{free_port()}"
    for uri, alias, message in ((unreachable, "x", "cannot reach Milvus at"), (milvus_uri, "absent", "'absent'")):
        env = server_env(backend="milvus", milvus_uri=uri, milvus_alias=alias)
        proc = subprocess.run(serve, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr
    proc = run_cli("index", "rollback", "--root", str(tmp_path), "--backend", "milvus", timeout=60)
    assert proc.returncode == 2 and "needs a URI" in proc.stderr, proc.stderr
    with pytest.raises(ValidationError, match="milvus_uri"):
        Settings(_env_file=None, backend="milvus")  # type: ignore[call-arg]
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # the default install, without the scale extra
    with pytest.raises(BackendError, match=r"pip install 'scalingnote\[scale\]'"):
        milvus_backend.connect(milvus_uri)


def test_alias_swap_under_load_fails_no_request(
    tiny: Space, second_corpus: Path, loadgen: ModuleType, serve, store: MilvusStore, tmp_path: Path
) -> None:
    root = index_root(tmp_path / "root", tiny.index)
    store.sync(root)
    old = versions.current_version(root)
    bodies = loadgen.write_bodies(tmp_path / "bodies.jsonl", [{"query": f"gene {w} risk", "k": 10} for w in range(50)])
    milvus = {"backend": "milvus", "milvus_uri": store.uri, "milvus_alias": store.alias}
    with serve(tiny.bundle, root, reload_poll_seconds=0.2, queue_budget_ms=5000, **milvus) as server:

        def swap() -> str:
            new = versions.rebuild(root, second_corpus, str(tiny.model), before_adopt=store.write, progress=False)
            store.sync(root)
            return new.version

        assert_swap_under_load(loadgen, server, bodies, old, swap)
        assert "index swapped" in server.log.read_text()


@pytest.mark.integration
def test_milvus_matches_faiss_ndcg_on_scifact(scifact: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """SciFact test, the demo's student bundle and teacher index if built (else MiniLM): nDCG@10 within 0.002."""
    from scalingnote.beir import load_dataset
    from scalingnote.evaluation.metrics import evaluate
    from scalingnote.modeling.loading import load_query_encoder
    from scalingnote.specs import resolve

    demo = REPO / "artifacts" / "demo"
    if (demo / "bundle" / "bundle.json").is_file() and (demo / "teacher-index" / "manifest.json").is_file():
        index_dir, encoder_spec = demo / "teacher-index", str(demo / "bundle")
    else:
        index_dir, encoder_spec = request.getfixturevalue("minilm_scifact_index"), "minilm-l6"
    store = MilvusStore.connect(str(tmp_path / "milvus.db"), "scifact")  # a Lite file: this process only
    store.sync(index_root(tmp_path / "root", index_dir))
    ds = load_dataset(scifact, ("test",))
    queries = ds.split_queries("test")
    vectors = load_query_encoder(resolve(encoder_spec), "auto").encode(list(queries.values()))
    scores = {}
    for name, index in (
        ("faiss", LoadedIndex.load(index_dir)),
        ("milvus", MilvusIndex.open(store.client, store.resolve())),
    ):
        hits = index.hits(vectors, 10)
        run = {qid: {h.id: h.score for h in row} for qid, row in zip(queries, hits, strict=True)}
        scores[name] = evaluate(ds.qrels["test"], run)["ndcg@10"]
    assert len(queries) == 300 and scores["faiss"] > 0.5
    assert abs(scores["milvus"] - scores["faiss"]) <= 0.002, scores


@pytest.mark.parametrize("raw", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_milvus_filters_match_faiss(raw: dict, meta_space: Space, milvus_uri: str, tmp_path: Path) -> None:
    """The same filter grammar on both backends: FAISS (IDSelector over the document store) and Milvus (an
    expression over its JSON metadata field) return the same documents, with the same fields."""
    store = MilvusStore.connect(milvus_uri, "meta")  # one collection for every case: the version is the same
    if "meta" not in store.client.list_aliases().get("aliases", []):
        store.sync(index_root(tmp_path / "root", meta_space.index))
    faiss_index, milvus = LoadedIndex.load(meta_space.index), MilvusIndex.open(store.client, store.resolve())
    spec = SearchSpec(20, "dense", Filter.model_validate(raw), ("journal", "year", "venue"))
    for vector in faiss_index.vectors()[[0, 7, 80]]:
        (want,), (got,) = faiss_index.query(vector[None], [""], [spec]), milvus.query(vector[None], [""], [spec])
        assert [(h.id, h.fields) for h in got] == [(h.id, h.fields) for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
