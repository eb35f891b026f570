"""Shared fixtures: tiny random-weight models and a tiny BEIR dataset (fast tests), real data paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scalingnote.encoders import builtin_path
from scalingnote.paths import data_root

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
    from index.build import build_index

    out = tmp_path_factory.mktemp("minilm") / "index"
    build_index(scifact, "minilm-l6", out, progress=False)
    return out
