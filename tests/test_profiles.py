"""Profiles as files: the built-in TOML profiles, ``--profile-file``, ``--set`` overrides and their errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from scalingnote.errors import UserError
from scalingnote.training.profiles import builtin_profiles, load_profile, profile_toml
from tests.conftest import run_cli


def test_builtin_profiles_are_files_and_round_trip_through_toml() -> None:
    assert set(builtin_profiles()) >= {"demo", "cpu", "cpu-llm", "gpu"}
    for name in builtin_profiles():
        profile = load_profile(name)
        assert profile.name == name
        assert type(profile).model_validate(tomllib.loads(profile_toml(profile))) == profile


def test_set_overrides_any_nested_field_with_a_typed_value() -> None:
    overrides = ["towers.lr=5e-5", "distill.student.layers=2", "distill.sources=['train', 'titles']", "seed=1"]
    with pytest.raises(UserError, match="seed"):
        load_profile("cpu", overrides=overrides)  # no such field: one-line error naming it
    profile = load_profile("cpu", overrides=[*overrides[:3], "towers.mine_depth=12", "towers.pooling=cls"])
    assert profile.towers.lr == 5e-5 and profile.distill.student.layers == 2
    assert profile.distill.sources == ["train", "titles"] and profile.towers.mine_depth == 12
    assert profile.towers.pooling == "cls" and profile.towers.seed == 0
    assert load_profile("cpu").towers.lr == 3e-5, "overrides never leak into the built-in"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("towers.steps=many", "towers.steps"),
        ("towers.pooling=max", "towers.pooling"),
        ("nope", "FIELD.PATH=VALUE"),
        ("towers.lr.x=1", "not a table"),
    ],
)
def test_bad_overrides_are_one_line_user_errors(override: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        load_profile("demo", overrides=[override])


def test_profile_file_from_the_cli_with_set(tmp_path: Path) -> None:
    printed = run_cli("train", "profiles", "cpu", "--set", "towers.steps=7")
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "mine.toml").write_text(printed.stdout.replace('name = "cpu"', 'name = "mine"'))
    again = run_cli("train", "profiles", "--profile-file", str(tmp_path / "mine.toml"), "--set", "distill.lr=0.01")
    assert again.returncode == 0, again.stderr
    data = tomllib.loads(again.stdout)
    assert data["name"] == "mine" and data["towers"]["steps"] == 7 and data["distill"]["lr"] == 0.01
    bad = run_cli("pipeline", "--profile-file", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and "profile file not found" in bad.stderr


TINY_PROFILE = """
name = "tiny"
description = "tiny models on the tiny BEIR set"
baselines = ["{model}"]
extra_students = []

[towers]
backbone = "{model}"
steps = 2
batch_size = 4
negatives = 1
lr = 1e-3
doc_max_length = 32

[extra_teachers.frozen]
backbone = "{model}"
doc_tower = "frozen"
doc_max_length = 64
steps = 2
batch_size = 4
negatives = 0
lr = 1e-3

[distill]
sources = ["train", "titles", "sentences"]
heldout = 8
steps = 2
batch_size = 8
lr = 1e-3
eval_every = 1

[distill.student]
backbone = "{model}"
layers = 1
max_length = 32
"""


def test_pipeline_runs_a_profile_file_and_reruns_only_what_an_override_changes(
    tiny_model: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "tiny.toml"
    profile.write_text(TINY_PROFILE.format(model=tiny_model))
    out = tmp_path / "run"
    args = ["pipeline", "--profile-file", str(profile), "--dataset", str(tiny_beir), "--out", str(out), "--no-progress"]
    first = run_cli(*args, "--set", "distill.steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / "student" / "train.json").read_text())["config"]["steps"] == 3
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["role"], r["stage"], r["variant"]) for r in rows[:5]] == [
        ("bm25", "bm25", "-"),
        ("baseline", f"baseline-{tiny_model.name}", "fp32"),
        ("teacher", "teacher", "torch"),
        ("teacher", "teacher-bundle", "fp32"),
        ("student", "student", "torch"),
    ]
    ladder = [(r["teacher"], r["stage"]) for r in rows if r["teacher"] == "teacher-frozen" and r["variant"] == "torch"]
    assert ladder == [("teacher-frozen", "teacher-frozen"), ("teacher-frozen", "student-frozen")]
    assert (out / "report-ladder.png").stat().st_size > 0 and "## Teacher ladder" in (out / "report.md").read_text()
    # the frozen doc tower is the backbone: its index and the off-the-shelf baseline are one cached build
    frozen_index = (out / "teacher-frozen-index" / "index.faiss").stat().st_ino
    assert frozen_index == (out / f"baseline-{tiny_model.name}-index" / "index.faiss").stat().st_ino
    assert {r["layers"] for r in rows if r["role"] == "student"} == {1}
    assert [r["stage"] for r in rows if r["served"]] == ["bundle"]
    report = (out / "report.md").read_text()
    assert "**On this data**, the served student" in report and f"{tiny_model.name} off the shelf" in report

    second = run_cli(*args, "--set", "distill.steps=4")
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("teacher", "teacher-index", "teacher-bundle", "teacher-frozen", f"baseline-{tiny_model.name}"):
        assert f"[{stage}] up to date" in second.stdout
    for stage in ("student", "bundle"):
        assert f"[{stage}] running" in second.stdout
    assert json.loads((out / "student" / "train.json").read_text())["config"]["steps"] == 4
