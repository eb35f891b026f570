"""BEIR loader: valid data loads in order; every kind of bad input names the file and line."""

import json
from pathlib import Path

import pytest

from scalingnote.beir import load_dataset, load_queries
from scalingnote.errors import DatasetError


def test_loads_tiny_dataset_in_file_order(tiny_beir: Path) -> None:
    ds = load_dataset(tiny_beir, ("train", "test"))
    assert list(ds.corpus)[:2] == ["cell-0", "cell-1"]
    assert ds.corpus["cell-0"].full_text.startswith("cell study 0 mitochondria")
    assert ds.split_queries("test") == {q: ds.queries[q] for q in ds.qrels["test"]}
    assert ds.qrels["test"]["q-test-heart"] == {"heart-0": 1}


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (dst / name).write_text((src / name).read_text())
    (dst / "qrels").mkdir()
    (dst / "qrels" / "test.tsv").write_text((src / "qrels" / "test.tsv").read_text())
    return dst


def test_missing_dir_and_file(tmp_path: Path, tiny_beir: Path) -> None:
    with pytest.raises(DatasetError, match="dataset directory not found"):
        load_dataset(tmp_path / "nope")
    ds = _copy(tiny_beir, tmp_path / "ds")
    (ds / "queries.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"missing file: .*queries"):
        load_dataset(ds)


def test_malformed_line_names_file_and_line(tmp_path: Path, tiny_beir: Path) -> None:
    ds = _copy(tiny_beir, tmp_path / "ds")
    lines = (ds / "corpus.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-3]
    (ds / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:3: malformed JSON"):
        load_dataset(ds)


def test_missing_text_field(tmp_path: Path, tiny_beir: Path) -> None:
    ds = _copy(tiny_beir, tmp_path / "ds")
    with (ds / "corpus.jsonl").open("a") as fh:
        fh.write(json.dumps({"_id": "x", "title": "no text"}) + "\n")
    with pytest.raises(DatasetError, match=r":41: field 'text'"):
        load_dataset(ds)


def test_qrels_with_unknown_ids(tmp_path: Path, tiny_beir: Path) -> None:
    ds = _copy(tiny_beir, tmp_path / "ds")
    with (ds / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q-test-cell\tghost-doc\t1\n")
    with pytest.raises(DatasetError, match=r"test\.tsv:7: document id 'ghost-doc' is not in the corpus"):
        load_dataset(ds, ("test",))
    with pytest.raises(DatasetError, match=r"no qrels for split .dev.*available: test"):
        load_dataset(tiny_beir, ("dev",))


def test_tsv_queries(tmp_path: Path) -> None:
    path = tmp_path / "queries.tsv"
    path.write_text("1\twhat is dna\n2\thow do vaccines work\n")
    assert load_queries(path) == {"1": "what is dna", "2": "how do vaccines work"}
    path.write_text("1\twhat is dna\nbroken line\n")
    with pytest.raises(DatasetError, match=r"queries\.tsv:2"):
        load_queries(path)
