"""Shared fixtures: tiny random-weight models and a tiny BEIR dataset (fast tests), real data paths."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest

# Indexes the code shares across runs through a cache: the tests' own go to a fresh folder, never the user's.
os.environ["SCALINGNOTE_INDEX_CACHE_DIR"] = tempfile.mkdtemp(prefix="scalingnote-test-index-cache-")

from scalingnote.paths import data_root
from scalingnote.specs import builtin_path

MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
TOPICS = {
    "cell": "mitochondria produce energy for the cell through respiration",
    "virus": "influenza virus spreads through droplets and infects the lungs",
    "heart": "aspirin lowers the risk of heart attack by thinning blood",
    "brain": "neurons in the brain communicate with synapses and dopamine",
    "gene": "dna mutations in genes can cause inherited disease",
}


def make_tiny_bert(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random-weight BERT (hidden 32) with MiniLM's real tokenizer: a valid HF model dir in milliseconds."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    src = builtin_path("minilm-l6")
    for name in MINILM_TOKENIZER_FILES:
        shutil.copyfile(src / name, path / name)
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return path


def write_tiny_beir(root: Path, docs_per_topic: int = 8) -> Path:
    """A BEIR dir: ``docs_per_topic`` docs per topic, one train and one test query per topic."""
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as fh:
        for topic, text in TOPICS.items():
            for i in range(docs_per_topic):
                fh.write(json.dumps({"_id": f"{topic}-{i}", "title": f"{topic} study {i}", "text": f"{text} ({i})"}))
                fh.write("\n")
    with (root / "queries.jsonl").open("w") as fh:
        for topic, text in TOPICS.items():
            for split in ("train", "test"):
                fh.write(json.dumps({"_id": f"q-{split}-{topic}", "text": " ".join(text.split()[:4])}) + "\n")
    for split in ("train", "test"):
        rows = [f"q-{split}-{t}\t{t}-{0 if split == 'test' else 1}\t1" for t in TOPICS]
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_beir(tmp_path_factory.mktemp("beir") / "tiny")


@pytest.fixture(scope="session")
def scifact() -> Path:
    """The real SciFact dataset (integration tests); fails loudly if the shared data is absent."""
    path = data_root() / "scifact"
    assert (path / "corpus.jsonl").is_file(), f"integration data missing: {path} (set SCALINGNOTE_DATA_DIR)"
    return path


@pytest.fixture(scope="session")
def minilm_scifact_index(scifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 index of the full SciFact corpus (about 3 min on 2 cores)."""
    from scalingnote.index.build import build_index

    out = tmp_path_factory.mktemp("minilm") / "index"
    build_index(scifact, "minilm-l6", out, progress=False)
    return out


# ---------------------------------------------------------------------------------------------------------------
# service / index-lifecycle fixtures (issue #4): tiny random-weight BERT towers, their indexes and ONNX
# bundles, a real `scalingnote serve` subprocess on 127.0.0.1, and the C load generator of bench/serve.
# ---------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SCALINGNOTE = Path(sys.executable).with_name("scalingnote")
WORDS = (
    "cell protein gene cancer immune virus vaccine blood heart brain risk dose trial patient tumour receptor signal "
    "pathway mouse human therapy infection growth factor insulin diabetes obesity vitamin bone muscle sleep stress "
    "memory neuron liver kidney lung skin drug effect response level increase decrease"
)


def write_corpus(path: Path, n_docs: int, seed: int, words_per_doc: int = 12) -> Path:
    """A BEIR dir with ``n_docs`` random-word documents (ids ``d<seed>-<i>``)."""
    rng, words = random.Random(seed), WORDS.split()
    path.mkdir(parents=True, exist_ok=True)
    with (path / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(n_docs):
            title = " ".join(rng.choices(words, k=3)) if i % 3 else ""
            text = " ".join(rng.choices(words, k=words_per_doc))
            fh.write(json.dumps({"_id": f"d{seed}-{i}", "title": title, "text": text}) + "\n")
    return path


@dataclass(frozen=True)
class Space:
    """A tiny doc tower with a corpus, its index and the bundle that queries it."""

    model: Path
    corpus: Path
    index: Path
    bundle: Path


def _space(root: Path, seed: int, n_docs: int) -> Space:
    from scalingnote.index.build import build_index
    from scalingnote.training.export import export_bundle

    model = make_tiny_bert(root / "model", seed)
    corpus = write_corpus(root / "corpus", n_docs, seed)
    build_index(corpus, str(model), root / "index", progress=False)
    export_bundle(str(model), root / "bundle", int8=False, log=lambda *_: None)
    return Space(model, corpus, root / "index", root / "bundle")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Space:
    """The main tiny space: 200 docs."""
    return _space(tmp_path_factory.mktemp("tiny"), seed=0, n_docs=200)


@pytest.fixture(scope="session")
def other_space(tmp_path_factory: pytest.TempPathFactory) -> Space:
    """A second, different tiny tower (other weights, so another embedding space)."""
    return _space(tmp_path_factory.mktemp("other"), seed=1, n_docs=50)


@pytest.fixture(scope="session")
def second_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another corpus (120 docs) to rebuild the tiny space's index from: same space, new version."""
    return write_corpus(tmp_path_factory.mktemp("corpus2"), 120, seed=7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``scalingnote serve`` subprocess."""

    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def search(self, query: str = "protein signal pathway", k: int = 5) -> dict:
        r = httpx.post(f"{self.url}/search", json={"query": query, "k": k}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()


def server_env(**settings: object) -> dict[str, str]:
    """The environment minus inherited ``SCALINGNOTE_*`` settings, plus ``settings`` as env vars."""
    keep = ("SCALINGNOTE_DATA_DIR", "SCALINGNOTE_INDEX_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALINGNOTE_") or k in keep}
    env |= {f"SCALINGNOTE_{k.upper()}": str(v) for k, v in settings.items()}
    return env


@contextmanager
def running_server(bundle: Path, index: Path, cwd: Path, ready_timeout: float = 90, **settings: object):
    """Start ``scalingnote serve`` on a free loopback port and wait for /readyz; stop it (SIGTERM) after."""
    port = free_port()
    log = cwd / f"server-{port}.log"
    cmd = [str(SCALINGNOTE), "serve", "--bundle", str(bundle), "--index", str(index), "--port", str(port)]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=server_env(**settings), stdout=fh, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {ready_timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., object]:
    """``with serve(bundle, index, **settings) as server:`` — a real server for this test."""

    def start(bundle: Path, index: Path, **settings: object):
        return running_server(bundle, index, tmp_path, **settings)

    return start


@pytest.fixture(scope="session")
def loadgen() -> ModuleType:
    """``bench/serve/loadgen.py`` (the C load generator's driver), with its binary built."""
    spec = importlib.util.spec_from_file_location("bench_serve_loadgen", REPO / "bench" / "serve" / "loadgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.BINARY = module.build()
    return module


def assert_swap_under_load(
    loadgen: ModuleType, server: Server, bodies: Path, old: str, swap: Callable[[], str]
) -> None:
    """Run 100 req/s for 6 s, call ``swap`` (it returns the new version) after 1 s: no request may fail, and
    ``index_version`` must go from ``old`` to the new version once, mid-run."""
    result: dict = {}
    load = threading.Thread(
        target=lambda: result.update(
            run=loadgen.run(
                loadgen.BINARY, server.port, bodies, rate=100, duration=6, capture="index_version", arrivals="even"
            )
        )
    )
    load.start()
    time.sleep(1.0)
    new = swap()
    load.join(60)
    run = result["run"]
    assert run.failed == 0, run.stats()
    assert len(run.status) == 600
    served = [v for v in run.captured if v]
    assert served[0] == old and served[-1] == new, "index_version changed under load"
    assert served.index(new) > 0 and set(served) == {old, new}
    assert server.search()["index_version"] == new


def index_root(path: Path, *indexes: Path) -> Path:
    """A versioned index root with ``indexes`` published in order (the last is current)."""
    from scalingnote.index.versions import publish_version

    for index in indexes:
        publish_version(index, path)
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCALINGNOTE), *args], capture_output=True, text=True, timeout=timeout, env=server_env(), check=False
    )


# --------------------------------------------------------------------------------- end of service fixtures ------


# ---------------------------------------------------------------------------------------------------------------
# training fixtures (issue #3): a tiny stage-1 teacher trained on the tiny BEIR set, its index, a tiny student.
# ---------------------------------------------------------------------------------------------------------------


def tiny_tower_config(backbone: Path, **overrides: object):
    """Stage-1 settings small enough for the tiny BERT and the tiny BEIR set."""
    from scalingnote.training.towers import TowerConfig

    base = {"backbone": str(backbone), "steps": 2, "batch_size": 4, "negatives": 1, "lr": 1e-3, "doc_max_length": 32}
    return TowerConfig(**(base | overrides))


def tiny_distill_config(backbone: Path, **overrides: object):
    """Stage-2 settings for a 1-layer student of the tiny BERT, on the tiny set's own queries and text."""
    from scalingnote.training.distill import DistillConfig, StudentConfig

    base = {
        "student": StudentConfig(backbone=str(backbone), layers=1, max_length=32),
        "sources": ["train", "titles", "sentences"],
        "heldout": 8,
        "steps": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "eval_every": 1,
    }
    return DistillConfig(**(base | overrides))


@pytest.fixture(scope="session")
def tiny_teacher(tiny_model: Path, tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scalingnote.training.towers import train_towers

    root = tmp_path_factory.mktemp("teacher")
    return train_towers(
        tiny_tower_config(tiny_model), tiny_beir, root / "teacher", work=root / "work", progress=False, log=print
    )


@pytest.fixture(scope="session")
def tiny_teacher_index(tiny_teacher: Path, tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scalingnote.index.build import build_index

    out = tmp_path_factory.mktemp("teacher-index") / "index"
    build_index(tiny_beir, str(tiny_teacher), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_student(
    tiny_model: Path, tiny_teacher: Path, tiny_teacher_index: Path, tiny_beir: Path, tmp_path_factory
) -> Path:
    from scalingnote.training.distill import distill

    root = tmp_path_factory.mktemp("student")
    cfg = tiny_distill_config(tiny_model)
    out, work = root / "student", root / "work"
    return distill(cfg, str(tiny_teacher), tiny_beir, out, work=work, index=tiny_teacher_index, progress=False)


# -------------------------------------------------------------------------------- end of training fixtures ------
