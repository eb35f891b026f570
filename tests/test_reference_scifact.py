"""Reproduce numbers published outside this project on SciFact test (integration: real models, real data)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def eval_json(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "scalingnote.cli", "eval", "--split", "test", "--json", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_minilm_matches_mteb(scifact: Path, minilm_scifact_index: Path, tmp_path: Path) -> None:
    """MTEB publishes nDCG@10 = 0.6451 for all-MiniLM-L6-v2 on SciFact."""
    result = eval_json(
        tmp_path, "--dataset", str(scifact), "--index", str(minilm_scifact_index), "--query-encoder", "minilm-l6"
    )
    assert result["queries"] == 300
    assert result["ndcg@10"] == pytest.approx(0.645, abs=0.005)


def test_bm25_matches_pyserini(scifact: Path, tmp_path: Path) -> None:
    """Pyserini publishes 0.665 (multifield) and 0.679 (flat) for BM25 on SciFact."""
    result = eval_json(tmp_path, "--dataset", str(scifact), "--bm25")
    assert 0.66 <= result["ndcg@10"] <= 0.69
    assert result["recall@100"] > 0.85
