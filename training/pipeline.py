"""``scalingnote pipeline``: every stage of a profile, resumable, ending in ``report.md``.

Output layout under ``--out`` (each directory published atomically):

* ``teacher/``          stage-1 dual tower (``dual.json``, ``query/``, ``doc/``)
* ``teacher-bundle/``   ONNX export of the teacher's query tower (fp32; the latency reference)
* ``teacher-index/``    FAISS index of the corpus embedded by ``teacher/doc``
* ``student/``          distilled query tower (its ``target`` is ``teacher/doc``)
* ``bundle/``           ONNX export of ``student/`` (fp32 + int8 when it passes its gate): what ``serve`` loads
* ``student-l<N>/``, ``bundle-l<N>/``  the same for each extra student size (profiles with ``extra_students``)
* ``end2end/``, ``end2end-index/``  the student's architecture trained as an ordinary dual tower on the
  teacher's pairs, and the index its own doc tower built (profiles with ``end2end``)
* ``finetune/``         the student trained on labels against the frozen teacher index (profiles with ``finetune``)
* ``baseline-index/``   index of the off-the-shelf encoder (profiles with ``baseline``)
* ``doc2query.jsonl``   generated pseudo-queries (profiles with ``doc2query``)
* ``report.md``, ``report.json``, ``curves/`` and ``.work/`` (checkpoints, caches, stage stamps)

A stage whose output exists and whose stamp matches the configuration of it and of everything upstream
is skipped, so an interrupted run continues where it stopped (training stages resume mid-way).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scalingnote.artifacts import now_iso
from scalingnote.paths import data_root
from training.loop import fingerprint
from training.profiles import Profile


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher_index(self) -> Path:
        return self.root / "teacher-index"

    def student_dir(self, name: str) -> Path:
        return self.root / name

    def bundle_dir(self, name: str) -> Path:
        """``student`` → ``bundle``, ``student-l2`` → ``bundle-l2``."""
        return self.root / name.replace("student", "bundle", 1)

    @property
    def teacher_bundle(self) -> Path:
        return self.root / "teacher-bundle"

    @property
    def end2end(self) -> Path:
        return self.root / "end2end"

    @property
    def end2end_index(self) -> Path:
        return self.root / "end2end-index"

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    @property
    def baseline_index(self) -> Path:
        return self.root / "baseline-index"

    @property
    def doc2query(self) -> Path:
        return self.root / "doc2query.jsonl"

    @property
    def work(self) -> Path:
        return self.root / ".work"

    @property
    def curves(self) -> Path:
        return self.root / "curves"


class Stages:
    """Runs stages in order, skipping those whose stamp matches; records each stage's seconds."""

    def __init__(self, work: Path, log: Callable[[str], None]) -> None:
        self.work = work
        self.log = log
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []

    def run(self, name: str, key: str, output: Path, fn: Callable[[], object]) -> str:
        stamp = self.work / name / "stage.json"
        if output.exists() and stamp.is_file():
            previous = json.loads(stamp.read_text(encoding="utf-8"))
            if previous.get("key") == key:
                self.log(f"[{name}] up to date ({output}), skipped")
                self.seconds[name] = float(previous.get("seconds", 0.0))
                self.skipped.append(name)
                return key
        self.log(f"[{name}] running -> {output}")
        t0 = time.monotonic()
        fn()
        seconds = time.monotonic() - t0
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"key": key, "seconds": seconds, "finished_at": now_iso()}) + "\n")
        self.seconds[name] = seconds
        self.log(f"[{name}] done in {seconds / 60:.1f} min")
        return key


def resolve_dataset(profile: Profile, dataset: Path | None) -> Path:
    if dataset is not None:
        return dataset
    path = Path(profile.dataset)
    return path if path.is_absolute() else data_root() / path


def run_towers_distributed(
    profile: Profile, dataset: Path, out: Path, work: Path, max_steps: int | None, pseudo: Path | None
) -> None:
    """Stage 1 on ``profile.nproc`` ranks: ``torchrun`` re-enters ``scalingnote train towers``."""
    script = Path(sys.executable).with_name("scalingnote")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={profile.nproc}", str(script)]
    cmd += ["train", "towers", "--profile", profile.name, "--dataset", str(dataset), "--out", str(out)]
    cmd += ["--work", str(work)] + (["--max-steps", str(max_steps)] if max_steps is not None else [])
    cmd += ["--pseudo-queries", str(pseudo)] if pseudo is not None else []
    subprocess.run(cmd, check=True)


def run_pipeline(
    profile: Profile,
    out: Path,
    *,
    dataset: Path | None = None,
    baseline_index: Path | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run ``profile`` into ``out``; returns the path of ``report.md``."""
    from training.report import write_report

    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    dataset = resolve_dataset(profile, dataset).resolve()
    lay = Layout(Path(out).resolve())
    lay.root.mkdir(parents=True, exist_ok=True)
    stages = Stages(lay.work, log)
    data_key = fingerprint(str(dataset), (dataset / "corpus.jsonl").stat().st_size)

    pseudo: dict[str, list[str]] | None = None
    d2q_key = ""
    if profile.doc2query is not None:
        from scalingnote.beir import load_corpus
        from training.doc2query import generate_queries, read_cache

        d2q_key = fingerprint(profile.doc2query.model_dump(), data_key)
        corpus = load_corpus(dataset / "corpus.jsonl")
        stages.run(
            "doc2query",
            d2q_key,
            lay.doc2query,
            lambda: generate_queries(profile.doc2query, corpus, lay.doc2query, progress),
        )
        pseudo = read_cache(lay.doc2query)

    def teacher() -> None:
        work = lay.work / "teacher"
        if profile.nproc > 1:
            d2q = lay.doc2query if profile.doc2query is not None else None
            run_towers_distributed(profile, dataset, lay.teacher, work, max_steps, d2q)
        else:
            from training.towers import train_towers

            train_towers(profile.towers, dataset, lay.teacher, work=work, pseudo=pseudo, progress=progress, log=log)

    t_key = stages.run("teacher", fingerprint(profile.towers.model_dump(), data_key, d2q_key), lay.teacher, teacher)

    def index(encoder: str, target: Path) -> Callable[[], object]:
        from index.build import build_index

        return lambda: build_index(dataset, encoder, target, batch_size=profile.index_batch_size, progress=progress)

    i_key = stages.run(
        "teacher-index", fingerprint(t_key, "index"), lay.teacher_index, index(str(lay.teacher), lay.teacher_index)
    )

    from scalingnote.beir import load_dataset

    ds = load_dataset(dataset, ("train", "test"))
    heldout = list(ds.split_queries("test").values())  # gate queries only: their labels are never read
    calibration = list(ds.split_queries("train").values())

    def export(model: Path, bundle: Path, int8: bool) -> Callable[[], object]:
        from training.export import export_bundle

        return lambda: export_bundle(
            str(model),
            bundle,
            index_dir=lay.teacher_index,
            queries=heldout,
            calibration=calibration,
            int8=int8,
            min_parity=profile.export.min_parity,
            min_overlap=profile.export.min_overlap,
            log=log,
        )

    stages.run(
        "teacher-bundle",
        fingerprint(i_key, "teacher-bundle"),
        lay.teacher_bundle,
        export(lay.teacher, lay.teacher_bundle, int8=False),
    )

    for name, cfg in profile.students():

        def student(cfg=cfg, name=name) -> None:
            from training.distill import distill

            distill(
                cfg,
                str(lay.teacher),
                dataset,
                lay.student_dir(name),
                work=lay.work / name,
                index=lay.teacher_index,
                cache_dir=lay.work / "teacher-queries",
                progress=progress,
                log=log,
            )

        s_key = stages.run(name, fingerprint(cfg.model_dump(), i_key), lay.student_dir(name), student)
        stages.run(
            lay.bundle_dir(name).name,
            fingerprint(profile.export.model_dump(), s_key),
            lay.bundle_dir(name),
            export(lay.student_dir(name), lay.bundle_dir(name), profile.export.int8),
        )

    if profile.end2end is not None:
        from training.towers import train_towers

        e_cfg = profile.end2end
        e_key = stages.run(
            "end2end",
            fingerprint(e_cfg.model_dump(), data_key, d2q_key),
            lay.end2end,
            lambda: train_towers(
                e_cfg, dataset, lay.end2end, work=lay.work / "end2end", pseudo=pseudo, progress=progress, log=log
            ),
        )
        stages.run(
            "end2end-index", fingerprint(e_key, "index"), lay.end2end_index, index(str(lay.end2end), lay.end2end_index)
        )

    if profile.finetune is not None:
        from training.query_finetune import train_query_finetune

        f_cfg = profile.finetune
        stages.run(
            "finetune",
            fingerprint(f_cfg.model_dump(), i_key),
            lay.finetune,
            lambda: train_query_finetune(
                f_cfg, lay.teacher_index, dataset, lay.finetune, work=lay.work / "finetune", progress=progress, log=log
            ),
        )

    baseline = None
    if profile.baseline is not None:
        baseline = baseline_index or lay.baseline_index
        if baseline_index is None:
            stages.run(
                "baseline-index",
                fingerprint(profile.baseline, data_key),
                lay.baseline_index,
                index(profile.baseline, lay.baseline_index),
            )

    collect_curves(lay)
    return write_report(profile, lay, dataset, stages, baseline, t_start, load_start, log=log)


def collect_curves(lay: Layout) -> None:
    """Copy each trained artifact's curves into ``curves/<stage>.{jsonl,png}``."""
    lay.curves.mkdir(exist_ok=True)
    named = [("teacher", lay.teacher), ("end2end", lay.end2end), ("finetune", lay.finetune)]
    named += [(p.name, p) for p in sorted(lay.root.glob("student*"))]
    for name, src in named:
        for suffix in ("jsonl", "png"):
            if (src / f"curves.{suffix}").is_file():
                shutil.copyfile(src / f"curves.{suffix}", lay.curves / f"{name}.{suffix}")
