"""Towers: pooling, EOS for decoder LLMs, batch/length-sort invariance, save/load round trip."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scalingnote.errors import ArtifactError
from scalingnote.modeling.pooling import pool
from scalingnote.modeling.tower import Tower

TEXTS = ["dna", "the immune system fights a virus infection", "aspirin and the heart", "neurons fire"]


def make_tiny_llama(path: Path) -> Path:
    """A random-weight Llama with a word-level tokenizer that has <eos> and <pad>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    words = sorted({w for t in TEXTS for w in t.split()} | {"a", "b"})
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "pad_token": "<pad>"}))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_pooling_modes() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]], [[2.0, 2.0], [4.0, 0.0], [6.0, 6.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.allclose(pool(hidden, mask, "mean"), torch.tensor([[2.0, 1.0], [4.0, 8 / 3]]))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.equal(pool(hidden, mask, "last-token"), torch.tensor([[3.0, 2.0], [6.0, 6.0]]))


def test_hf_dir_defaults_to_sentence_transformers_config(tiny_model: Path) -> None:
    tower = Tower.from_pretrained(tiny_model)
    assert tower.meta.encoder.pooling == "mean" and tower.meta.encoder.max_length == 64
    assert not tower.meta.append_eos and tower.dim == 32


def test_decoder_gets_last_token_pooling_and_eos(tmp_path: Path) -> None:
    tower = Tower.from_pretrained(make_tiny_llama(tmp_path / "llama"))
    assert tower.meta.encoder.pooling == "last-token" and tower.meta.append_eos
    batch = tower.batch(["dna", "neurons fire"])
    eos = tower.tokenizer.token_to_id("<eos>")
    last = batch["attention_mask"].sum(1) - 1
    assert batch["input_ids"][torch.arange(2), last].tolist() == [eos, eos]
    assert tower.resolve_dtype("auto") == torch.float32  # bf16 autocast only on a GPU (slower on these CPUs)
    assert tower.resolve_dtype("bf16") == torch.bfloat16


def test_encode_is_batch_and_order_invariant(tiny_model: Path) -> None:
    tower = Tower.from_pretrained(tiny_model)
    together = tower.encode(TEXTS, batch_size=3, dtype="fp32", progress=False)
    alone = np.stack([tower.encode([t], dtype="fp32", progress=False)[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_save_and_reload_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    tower = Tower.from_pretrained(tiny_model, projection_dim=8)
    before = tower.encode(TEXTS, dtype="fp32", progress=False)
    tower.save(tmp_path / "t", id="tiny-student", role="query")
    again = Tower.from_pretrained(tmp_path / "t")
    assert again.meta.id == "tiny-student" and again.dim == 8 and again.meta.projection
    np.testing.assert_allclose(again.encode(TEXTS, dtype="fp32", progress=False), before, atol=1e-6)


def test_truncation_respects_max_length(tiny_model: Path) -> None:
    tower = Tower.from_pretrained(tiny_model)
    tower.set_max_length(8)
    assert tower.batch(["word " * 100])["input_ids"].shape[1] == 8


def test_missing_tokenizer_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model.iterdir():
        if f.name != "tokenizer.json":
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ArtifactError, match=r"no tokenizer\.json"):
        Tower.from_pretrained(broken)
