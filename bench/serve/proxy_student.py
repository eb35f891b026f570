"""A latency proxy for the distilled student: the first N layers of all-MiniLM-L6-v2, untrained.

It has the student's shape (N layers, hidden 384) and targets all-MiniLM-L6-v2's doc space, so it can query
that index; its ranking quality is not a student's. Use it only to measure serving cost before the real
student bundle exists:

    .venv/bin/python bench/serve/proxy_student.py --layers 2 --out .cache/bench/proxy-l2
    .venv/bin/python bench/serve/run.py --bundle .cache/bench/proxy-l2/bundle --query-model .cache/bench/proxy-l2/tower
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--index", type=Path, default=None, help="all-MiniLM-L6-v2 index for the int8 gate.")
    p.add_argument("--queries", type=Path, default=None, help="Held-out queries (qid<TAB>text) for the int8 gate.")
    args = p.parse_args()

    from scalingnote.beir import load_queries
    from scalingnote.modeling.tower import Tower
    from scalingnote.specs import builtin_path, doc_space, resolve
    from scalingnote.training.export import export_bundle

    tower = Tower.from_pretrained(builtin_path("minilm-l6"), ident="minilm-l6")
    bert: Any = tower.backbone  # a transformers BertModel
    bert.encoder.layer = bert.encoder.layer[: args.layers]
    bert.config.num_hidden_layers = args.layers
    name = f"proxy-minilm-l{args.layers}"
    tower.save(args.out / "tower", id=name, role="query", space=doc_space(resolve("minilm-l6")), teacher="minilm-l6")
    queries = list(load_queries(args.queries).values())[:512] if args.queries else []
    manifest = export_bundle(
        str(args.out / "tower"), args.out / "bundle", index_dir=args.index, queries=queries, int8=bool(queries)
    )
    print(f"{name}: bundle {args.out / 'bundle'} ({', '.join(manifest.variants)})")


if __name__ == "__main__":
    main()
