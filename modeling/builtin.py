"""Prepare built-in models for offline use: unpack a split zip, or convert a GGUF LLM, once into the cache."""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

from scalingnote.artifacts import publish_dir, sha256_file, staging_dir
from scalingnote.errors import ArtifactError, UserError
from scalingnote.specs import BUILTINS, Builtin, builtin_path, package_files, verify_builtin


def prepare(name: str) -> Path:
    """Make built-in ``name`` loadable from a plain HF directory, verified against its hashes; idempotent."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    builtin = BUILTINS[name]
    target = builtin_path(name)
    if not (target / "config.json").is_file():
        tmp = staging_dir(target)
        try:
            source = joined_source(builtin, tmp)
            if builtin.layout == "gguf":
                _convert_gguf(source, tmp)
            elif builtin.layout == "zip":
                _unzip_model(builtin, source, tmp)
            if source.parent == tmp:
                source.unlink()
            verify_builtin(name, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_dir(tmp, target)
    verify_builtin(name, target)
    return target


def joined_source(builtin: Builtin, work: Path) -> Path:
    """The package's ``source`` file, or its numbered parts (``.001`` …, ``.part00`` …) joined in order into
    ``work``; checked against ``source_sha256`` when the builtin has one."""
    pattern = re.compile(rf"(?:.*/)?{re.escape(builtin.source)}(?:\.(?:part)?(\d+))?")  # source may name a dir
    found = [(m, p) for p in package_files(builtin, "") if (m := pattern.fullmatch(p.as_posix()))]
    whole = [p for m, p in found if m.group(1) is None]
    parts = sorted((int(m.group(1)), p) for m, p in found if m.group(1) is not None)
    if whole:
        source = whole[0]
    elif parts:
        numbers = [n for n, _ in parts]
        if numbers[0] not in (0, 1) or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise UserError(f"built-in model {builtin.name!r}: parts {numbers} of {builtin.source} are not consecutive")
        source = work / Path(builtin.source).name
        with source.open("wb") as fh:
            for _, part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 24)
    else:
        raise UserError(f"built-in model {builtin.name!r}: its packages hold no {builtin.source} ({builtin.install})")
    if builtin.source_sha256 and sha256_file(source) != builtin.source_sha256:
        raise ArtifactError(f"built-in model {builtin.name!r}: {builtin.source} does not match its published sha256")
    return source


def _unzip_model(builtin: Builtin, source: Path, out: Path) -> None:
    """Unpack the model directory of a zip into ``out`` (the folder that holds ``config.json``)."""
    try:
        with zipfile.ZipFile(source) as zf:
            zf.extractall(out / "unpacked")
    except zipfile.BadZipFile as exc:
        raise UserError(f"built-in model {builtin.name!r}: {source.name} is not a valid zip ({exc})") from None
    config = min((out / "unpacked").rglob("config.json"), key=lambda p: len(p.parts), default=None)
    if config is None:
        raise UserError(f"built-in model {builtin.name!r}: the zip holds no config.json")
    for item in config.parent.iterdir():
        shutil.move(item, out / item.name)
    shutil.rmtree(out / "unpacked")


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint into an fp32 safetensors directory (about 15 s, 538 MB)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    del config.quantization_config  # the dequantised copy is a plain model
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
