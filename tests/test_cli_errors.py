"""Bad input on the CLI: one line on stderr naming the problem, exit status 2, no traceback."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from scalingnote.choices import Dtype, VariantChoice
from scalingnote.index.build import build_index
from scalingnote.service.settings import LogLevel, Settings
from tests.conftest import make_tiny_bert


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalingnote.cli", *args], capture_output=True, text=True, timeout=300)


def run_wide(*args: str) -> subprocess.CompletedProcess:
    """``run_cli`` on a wide terminal: help and usage errors unwrapped."""
    env = os.environ | {"COLUMNS": "240"}
    cmd = [sys.executable, "-m", "scalingnote.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def two_indexes(tiny_model: Path, tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    other = make_tiny_bert(root / "other-bert", seed=1)
    built = {"tiny": root / "idx-tiny", "other": root / "idx-other"}
    build_index(tiny_beir, str(tiny_model), built["tiny"], progress=False)
    build_index(tiny_beir, str(other), built["other"], progress=False)
    return built


def test_missing_dataset_dir(tmp_path: Path) -> None:
    assert_user_error(run_cli("eval", "--dataset", str(tmp_path / "nope"), "--bm25"), "dataset directory not found")


def test_malformed_jsonl_line(tiny_beir: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "corpus.jsonl").write_text((tiny_beir / "corpus.jsonl").read_text() + "{not json\n")
    (ds / "queries.jsonl").write_text((tiny_beir / "queries.jsonl").read_text())
    assert_user_error(run_cli("eval", "--dataset", str(ds), "--bm25"), "corpus.jsonl:41", "malformed JSON")


def test_unknown_encoder_name(tiny_beir: Path, tmp_path: Path) -> None:
    proc = run_cli("index", "build", "--dataset", str(tiny_beir), "--doc-encoder", "bert-huge", "--out", str(tmp_path))
    assert_user_error(proc, "unknown encoder 'bert-huge'", "minilm-l6")


def test_index_dim_mismatch(tiny_beir: Path, two_indexes: dict[str, Path]) -> None:
    proc = run_cli(
        "eval", "--dataset", str(tiny_beir), "--index", str(two_indexes["tiny"]), "--query-encoder", "minilm-l6"
    )
    assert_user_error(proc, "dim 384 does not match index dim 32")


def test_index_doc_encoder_mismatch(tiny_beir: Path, tiny_model: Path, two_indexes: dict[str, Path]) -> None:
    proc = run_cli(
        "eval", "--dataset", str(tiny_beir), "--index", str(two_indexes["other"]), "--query-encoder", str(tiny_model)
    )
    assert_user_error(proc, "different embedding spaces", "other-bert")


def test_matching_encoder_evaluates(
    tiny_beir: Path, tiny_model: Path, two_indexes: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    proc = run_cli(
        "eval",
        "--dataset",
        str(tiny_beir),
        "--index",
        str(two_indexes["tiny"]),
        "--query-encoder",
        str(tiny_model),
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert {"ndcg@10", "recall@100", "mrr@10"} <= set(__import__("json").loads(out.read_text()))


def test_version_prints_the_package_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"scalingnote {importlib.metadata.version('scalingnote')}"


def test_serve_help_lists_every_setting_with_its_env_var() -> None:
    proc = run_wide("serve", "--help")
    assert proc.returncode == 0, proc.stderr
    missing = [name for name in Settings.model_fields if f"SCALINGNOTE_{name.upper()}" not in proc.stdout]
    assert not missing, f"serve --help does not list {missing}"
    for flag in ("--bundle", "--index", "--host", "--port", "--max-batch-size", "--no-fast-path"):
        assert flag in proc.stdout


CHOICES = {  # command, its other required options, the option, its Literal
    "serve-variant": (("serve",), (), "--variant", VariantChoice),
    "serve-log-level": (("serve",), (), "--log-level", LogLevel),
    "eval-variant": (("eval",), ("--dataset", "x", "--bm25"), "--variant", VariantChoice),
    "index-build-dtype": (("index", "build"), ("--dataset", "x", "--doc-encoder", "y", "--out", "z"), "--dtype", Dtype),
}


@pytest.mark.parametrize(("command", "required", "option", "choices"), CHOICES.values(), ids=CHOICES.keys())
def test_choice_options_list_their_values_and_reject_others(
    command: tuple[str, ...], required: tuple[str, ...], option: str, choices: object
) -> None:
    values = get_args(choices)
    assert "|".join(values) in run_wide(*command, "--help").stdout
    proc = run_wide(*command, *required, option, "bogus")
    assert proc.returncode == 2, proc.stderr
    assert f"Invalid value for '{option}'" in proc.stderr and "Traceback" not in proc.stderr
    assert all(f"'{value}'" in proc.stderr for value in values), proc.stderr
