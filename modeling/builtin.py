"""Prepare built-in models for offline use (the GGUF LLM is converted once to safetensors)."""

from __future__ import annotations

import os
from pathlib import Path

from scalingnote.artifacts import publish_dir, staging_dir
from scalingnote.specs import builtin_path, gguf_source


def prepare(name: str) -> Path:
    """Make built-in ``name`` loadable from a plain HF directory; idempotent."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target = builtin_path(name)
    if (target / "config.json").is_file():
        return target
    if name == "smollm2-135m":
        _convert_gguf(gguf_source(name), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into an fp32 safetensors directory (about 15 s, 538 MB)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    del config.quantization_config  # the dequantised copy is a plain model
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    tmp = staging_dir(target)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, target)
