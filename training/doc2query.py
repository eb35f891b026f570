"""doc2query: an instruction-tuned LLM writes pseudo-queries for each document, cached as JSONL.

Stage 1 of an LLM teacher needs far more pairs than a small judged train split; generated queries supply
them. Generation is slow on a CPU, so the cache is appended batch by batch and a rerun resumes where
it stopped. One line per document: ``{"doc_id": ..., "queries": [...]}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from scalingnote.beir import Document
from scalingnote.specs import resolve

PROMPT = "Write one short search query that this scientific abstract answers.\n\nAbstract: {text}\n\nQuery:"


class Doc2QueryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2-135m"
    per_doc: int = 3
    doc_chars: int = 1200
    max_new_tokens: int = 32
    batch_size: int = 16
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


def read_cache(path: Path) -> dict[str, list[str]]:
    """Generated queries by doc id; a torn last line (killed mid-write) is ignored."""
    out: dict[str, list[str]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[row["doc_id"]] = row["queries"]
    return out


def clean(text: str) -> str:
    """First line of a generation, without quotes or a leading label."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.removeprefix("Query:").strip().strip('"').strip()


@torch.inference_mode()
def generate_queries(
    cfg: Doc2QueryConfig, corpus: dict[str, Document], cache: Path, progress: bool = True
) -> dict[str, list[str]]:
    """Fill ``cache`` with ``cfg.per_doc`` queries for every document not in it yet; returns the whole cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    done = read_cache(cache)
    todo = [d for d in corpus.values() if d.id not in done]
    if not todo:
        return done
    path = resolve(cfg.model).path
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    torch.manual_seed(cfg.seed)

    def prompt(doc: Document) -> str:
        content = PROMPT.format(text=doc.full_text[: cfg.doc_chars])
        if tokenizer.chat_template:
            messages = [{"role": "user", "content": content}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return content

    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.is_file() and not cache.read_bytes().endswith(b"\n"):  # drop a line torn by a kill
        text = cache.read_text(encoding="utf-8")
        cache.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    with cache.open("a", encoding="utf-8") as fh, tqdm(total=len(todo), desc="doc2query", disable=not progress) as bar:
        for start in range(0, len(todo), cfg.batch_size):
            docs = todo[start : start + cfg.batch_size]
            inputs = tokenizer([prompt(d) for d in docs], return_tensors="pt", padding=True).to(device)
            generated = model.generate(
                **inputs,
                do_sample=True,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                num_return_sequences=cfg.per_doc,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, doc in enumerate(docs):
                queries = sorted({q for q in map(clean, texts[i * cfg.per_doc : (i + 1) * cfg.per_doc]) if q})
                done[doc.id] = queries
                fh.write(json.dumps({"doc_id": doc.id, "queries": queries}) + "\n")
            fh.flush()
            bar.update(len(docs))
    return done
