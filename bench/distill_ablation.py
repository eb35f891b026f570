"""Stage-2 ablation: the paper's loss against its parts and each extension, one teacher, one run.

Every variant distils the same teacher's query tower (same queries, cached teacher embeddings, same seed) for the
same number of steps, then scores SciFact test (the reported figure) and train (a dev figure: queries the teacher
trained on, the student did not see as labels). Retention is student nDCG@10 over the teacher's, same split.
Variants start from the profile's ``[distill]`` recipe and change one thing each (… marks a change to the recipe).

    python bench/distill_ablation.py --teacher artifacts/cpu/teacher --index artifacts/cpu/teacher-index \
        --labels artifacts/cpu/.work/teacher-queries --readme
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from readme_block import replace_block

from scalingnote.beir import load_dataset
from scalingnote.evaluation.dense import dense_run
from scalingnote.evaluation.metrics import evaluate
from scalingnote.paths import data_root
from scalingnote.training.distill import distill
from scalingnote.training.profiles import load_profile
from scalingnote.training.render import cpu_model

HERE = Path(__file__).parent
BLOCK = "distill_ablation"
PAPER = ["distill.kl_weight=0"]
VARIANTS: list[tuple[str, list[str]]] = [
    ("MSE + cos (the paper's loss)", PAPER),
    ("MSE only (LEAF's plain L2 on embeddings)", [*PAPER, "distill.cos_weight=0"]),
    ("cos only", [*PAPER, "distill.mse_weight=0"]),
    ("MSE + cos + ranking KL over the teacher's top 32 docs (the profile's recipe)", []),
    (
        "… student cut from MiniLM-L6 as released (not the teacher's query tower)",
        ["distill.student.backbone=minilm-l6"],
    ),
    ("… first 4 layers (the previous recipe's layer map)", ["distill.student.layers=4"]),
    ("… 3 sentences per doc (the previous text pool)", ["distill.sentences_per_doc=3"]),
    ("… token table frozen", ["distill.student.freeze_embeddings=true"]),
]


def score(index: Path, model: str, ds, split: str) -> dict[str, float]:
    run, _ = dense_run(index, model, ds.split_queries(split))
    return evaluate(ds.qrels[split], run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True, help="A stage-1 teacher (dual-tower directory).")
    ap.add_argument("--index", type=Path, required=True, help="The teacher's index.")
    ap.add_argument("--profile", default="cpu", help="Profile whose [distill] recipe the variants start from.")
    ap.add_argument("--steps", type=int, default=0, help="Steps per variant (0: the profile's).")
    ap.add_argument("--only", type=int, nargs="+", help="Run only these variants (row numbers from 0).")
    ap.add_argument("--work", type=Path, default=HERE.parent / ".cache" / "bench" / "distill_ablation")
    ap.add_argument("--labels", type=Path, help="Teacher-label cache to reuse (the pipeline's .work/teacher-queries).")
    ap.add_argument("--json", type=Path, help="Results file (default: results/distill_ablation[-PROFILE].json).")
    ap.add_argument("--readme", action="store_true", help="Rewrite this benchmark's table in bench/README.md.")
    args = ap.parse_args()
    args.json = args.json or HERE / "results" / f"{block_name(args.profile)}.json"
    runtime = load_profile(args.profile).encode_runtime

    dataset = data_root() / "scifact"
    ds = load_dataset(dataset, ("test", "train"))
    teacher = {split: score(args.index, str(args.teacher), ds, split)["ndcg@10"] for split in ("test", "train")}
    rows, t0 = [], time.time()
    for i, (name, overrides) in enumerate(VARIANTS):
        if args.only is not None and i not in args.only:
            continue
        cfg = load_profile(args.profile, overrides=overrides).distill
        steps = args.steps or cfg.steps
        cfg = cfg.model_copy(update={"steps": steps, "eval_every": steps})
        out, work = args.work / args.profile / f"v{i}", args.work / args.profile / f"w{i}"
        started = time.time()
        distill(cfg, str(args.teacher), dataset, out, work=work, index=args.index,
                progress=False, log=print, cache_dir=args.labels or args.work / "cache", runtime=runtime)  # fmt: skip
        seconds = json.loads((out / "train.json").read_text())["train_seconds"]
        test, dev = score(args.index, str(out), ds, "test"), score(args.index, str(out), ds, "train")
        rows.append({
            "variant": name, "overrides": overrides, "steps": steps, "train_s": round(seconds, 1),
            "wall_s": round(time.time() - started, 1), "ndcg@10": test["ndcg@10"], "recall@100": test["recall@100"],
            "retention": test["ndcg@10"] / teacher["test"], "dev_ndcg@10": dev["ndcg@10"],
            "dev_retention": dev["ndcg@10"] / teacher["train"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "machine": f"{os.cpu_count()} CPU(s), {cpu_model()}",
        "teacher": str(args.teacher),
        "teacher_ndcg@10": teacher,
        "seconds": round(time.time() - t0),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.readme:
        write_readme(rows, meta, args)


def block_name(profile: str) -> str:
    """The README block and results file of one profile's ablation (the ``cpu`` one keeps the plain name)."""
    return BLOCK if profile == "cpu" else f"{BLOCK}-{profile}"


def write_readme(rows: list[dict], meta: dict, args: argparse.Namespace) -> None:
    t = meta["teacher_ndcg@10"]
    lines = [
        "## Distillation ablation (`bench/distill_ablation.py`)"
        + ("" if args.profile == "cpu" else f", the `{args.profile}` recipe"),
        "",
        f"`python bench/distill_ablation.py --teacher {args.teacher} --index {args.index}"
        + ("" if args.profile == "cpu" else f" --profile {args.profile}")
        + (f" --labels {args.labels}" if args.labels else "")
        + (f" --steps {args.steps}" if args.steps else "")
        + (f" --only {' '.join(map(str, args.only))}" if args.only else "")
        + " --readme`"
        f" — {meta['machine']}, {meta['finished']}, {meta['seconds'] / 60:.0f} min. One teacher (SciFact test"
        f" nDCG@10 {t['test']:.4f}, train {t['train']:.4f}), {rows[0]['steps']} steps each, the same queries and"
        " seed. *dev*: SciFact train queries (no test query is ever used to train or to choose).",
        "",
        "| variant | test nDCG@10 | kept | Recall@100 | dev nDCG@10 | dev kept | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['ndcg@10']:.4f} | {r['retention']:.1%} | {r['recall@100']:.4f} | "
        f"{r['dev_ndcg@10']:.4f} | {r['dev_retention']:.1%} | {r['train_s']:.0f} |"
        for r in rows
    ]
    replace_block(block_name(args.profile), "\n".join(lines))


if __name__ == "__main__":
    main()
