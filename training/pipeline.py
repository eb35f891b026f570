"""``scalingnote pipeline``: every stage of a profile, declared as data, resumable, ending in ``report.md``.

Output layout under ``--out`` (each directory published atomically):

* ``teacher/``          stage-1 dual tower (``dual.json``, ``query/``, ``doc/``)
* ``teacher-bundle/``   ONNX export of the teacher's query tower (fp32; the latency reference)
* ``teacher-index/``    FAISS index of the corpus embedded by ``teacher/doc``
* ``student/``          distilled query tower (its ``space`` is ``teacher/doc``'s)
* ``bundle/``           ONNX export of ``student/`` (fp32 + int8 when it passes its gate): what ``serve`` loads
* ``student-l<N>/``, ``bundle-l<N>/``  the same for each extra student size (``extra_students``)
* ``end2end/``, ``end2end-index/``  the student's architecture trained as an ordinary dual tower on the
  teacher's pairs, and the index its own doc tower built (profiles with ``end2end``)
* ``finetune/``         the student trained on labels against the frozen teacher index (profiles with ``finetune``)
* ``baseline-index/``   index of the off-the-shelf encoder (profiles with ``baseline``)
* ``doc2query.jsonl``   generated pseudo-queries (profiles with ``doc2query``)
* ``report.md``, ``report.json``, ``report.png``, ``curves/`` and ``.work/`` (checkpoints, caches, stamps)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from scalingnote.paths import data_root
from scalingnote.training.loop import fingerprint
from scalingnote.training.profiles import Profile, profile_toml
from scalingnote.training.stages import Stage, StageLog, run_stages


@dataclass(frozen=True)
class Layout:
    """Where each artifact of a run lives under its output root (each directory is named after its stage)."""

    root: Path

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher_index(self) -> Path:
        return self.root / "teacher-index"

    @property
    def teacher_bundle(self) -> Path:
        return self.root / "teacher-bundle"

    def student_dir(self, name: str) -> Path:
        return self.root / name

    def bundle_dir(self, student: str) -> Path:
        """``student`` → ``bundle``, ``student-l2`` → ``bundle-l2``."""
        return self.root / student.replace("student", "bundle", 1)

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


def resolve_dataset(profile: Profile, dataset: Path | None) -> Path:
    if dataset is not None:
        return dataset
    path = Path(profile.dataset)
    return path if path.is_absolute() else data_root() / path


@dataclass
class Run:
    """What the stages of one pipeline run share; each method returns the function of one stage."""

    profile: Profile
    lay: Layout
    dataset: Path
    progress: bool
    log: Callable[[str], None]

    @cached_property
    def data_key(self) -> str:
        return fingerprint(str(self.dataset), (self.dataset / "corpus.jsonl").stat().st_size)

    @cached_property
    def gate_queries(self) -> tuple[list[str], list[str]]:
        """(held-out test queries for the export gates, whose labels are never read; train queries to calibrate)."""
        from scalingnote.beir import load_dataset

        ds = load_dataset(self.dataset, ("train", "test"))
        return list(ds.split_queries("test").values()), list(ds.split_queries("train").values())

    def pseudo(self) -> dict[str, list[str]] | None:
        from scalingnote.training.doc2query import read_cache

        return read_cache(self.lay.doc2query) if self.profile.doc2query is not None else None

    def doc2query(self) -> None:
        from scalingnote.beir import load_corpus
        from scalingnote.training.doc2query import generate_queries

        corpus = load_corpus(self.dataset / "corpus.jsonl")
        generate_queries(self.profile.doc2query, corpus, self.lay.doc2query, self.progress)

    def towers(self, cfg, out: Path, distributed: bool = False) -> Callable[[], object]:
        from scalingnote.training.towers import train_towers

        work = self.lay.work / out.name
        if distributed and self.profile.nproc > 1:
            return lambda: self._towers_distributed(out, work)
        return lambda: train_towers(
            cfg, self.dataset, out, work=work, pseudo=self.pseudo(), progress=self.progress, log=self.log
        )

    def _towers_distributed(self, out: Path, work: Path) -> None:
        """Stage 1 on ``nproc`` ranks: ``torchrun`` re-enters ``scalingnote train towers`` with this profile."""
        work.mkdir(parents=True, exist_ok=True)
        (work / "profile.toml").write_text(profile_toml(self.profile), encoding="utf-8")
        script = Path(sys.executable).with_name("scalingnote")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={self.profile.nproc}", str(script)]
        cmd += ["train", "towers", "--profile-file", str(work / "profile.toml"), "--dataset", str(self.dataset)]
        cmd += ["--out", str(out), "--work", str(work)]
        cmd += ["--pseudo-queries", str(self.lay.doc2query)] if self.profile.doc2query is not None else []
        subprocess.run(cmd, check=True)

    def index(self, encoder: str, out: Path) -> Callable[[], object]:
        from scalingnote.index.build import build_index

        batch = self.profile.index_batch_size
        return lambda: build_index(self.dataset, encoder, out, batch_size=batch, progress=self.progress)

    def export(self, model: Path, bundle: Path, int8: bool) -> Callable[[], object]:
        from scalingnote.training.export import export_bundle

        def run() -> object:
            heldout, calibration = self.gate_queries
            cfg = self.profile.export
            return export_bundle(
                str(model),
                bundle,
                index_dir=self.lay.teacher_index,
                queries=heldout,
                calibration=calibration,
                int8=int8,
                min_parity=cfg.min_parity,
                min_overlap=cfg.min_overlap,
                log=self.log,
            )

        return run

    def student(self, name: str, cfg) -> Callable[[], object]:
        from scalingnote.training.distill import distill

        lay = self.lay
        return lambda: distill(
            cfg,
            str(lay.teacher),
            self.dataset,
            lay.student_dir(name),
            work=lay.work / name,
            index=lay.teacher_index,
            cache_dir=lay.work / "teacher-queries",
            progress=self.progress,
            log=self.log,
        )

    def finetune(self) -> None:
        from scalingnote.training.query_finetune import train_query_finetune

        lay = self.lay
        train_query_finetune(
            self.profile.finetune,
            lay.teacher_index,
            self.dataset,
            lay.finetune,
            work=lay.work / "finetune",
            progress=self.progress,
            log=self.log,
        )


def teacher_stages(run: Run) -> list[Stage]:
    """Stage 1, the teacher's index and its fp32 bundle (the latency reference)."""
    p, lay = run.profile, run.lay
    d2q = ("doc2query",) if p.doc2query is not None else ()
    train = run.towers(p.towers, lay.teacher, distributed=True)
    bundle = run.export(lay.teacher, lay.teacher_bundle, int8=False)
    return [
        Stage("teacher", lay.teacher, [p.towers.model_dump(), run.data_key], train, d2q),
        Stage(
            "teacher-index", lay.teacher_index, "index", run.index(str(lay.teacher), lay.teacher_index), ("teacher",)
        ),
        Stage("teacher-bundle", lay.teacher_bundle, "teacher-bundle", bundle, ("teacher-index",)),
    ]


def student_stages(run: Run, name: str, cfg) -> list[Stage]:
    """One student tier: its distillation from the teacher's query tower, then its gated ONNX bundle."""
    lay, export = run.lay, run.profile.export
    student, bundle = lay.student_dir(name), lay.bundle_dir(name)
    return [
        Stage(name, student, cfg.model_dump(), run.student(name, cfg), ("teacher-index",)),
        Stage(bundle.name, bundle, export.model_dump(), run.export(student, bundle, export.int8), (name,)),
    ]


def baseline_stages(run: Run, baseline_index: Path | None) -> list[Stage]:
    """The comparisons: end-to-end small dual tower, label fine-tuned student, off-the-shelf index."""
    p, lay, stages = run.profile, run.lay, []
    if p.end2end is not None:
        d2q = ("doc2query",) if p.doc2query is not None else ()
        train = run.towers(p.end2end, lay.end2end)
        stages.append(Stage("end2end", lay.end2end, [p.end2end.model_dump(), run.data_key], train, d2q))
        index = run.index(str(lay.end2end), lay.end2end_index)
        stages.append(Stage("end2end-index", lay.end2end_index, "index", index, ("end2end",)))
    if p.finetune is not None:
        stages.append(Stage("finetune", lay.finetune, p.finetune.model_dump(), run.finetune, ("teacher-index",)))
    if p.baseline is not None and baseline_index is None:
        index = run.index(p.baseline, lay.baseline_index)
        stages.append(Stage("baseline-index", lay.baseline_index, [p.baseline, run.data_key], index))
    return stages


def plan(run: Run, baseline_index: Path | None) -> list[Stage]:
    """Every stage of ``run.profile``, in order."""
    p = run.profile
    stages = []
    if p.doc2query is not None:
        stages.append(Stage("doc2query", run.lay.doc2query, [p.doc2query.model_dump(), run.data_key], run.doc2query))
    stages += teacher_stages(run)
    for name, cfg in p.students():
        stages += student_stages(run, name, cfg)
    return stages + baseline_stages(run, baseline_index)


def run_pipeline(
    profile: Profile,
    out: Path,
    *,
    dataset: Path | None = None,
    baseline_index: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run ``profile`` into ``out``; returns the path of ``report.md``."""
    from scalingnote.training.report import write_report

    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    lay = Layout(Path(out).resolve())
    lay.root.mkdir(parents=True, exist_ok=True)
    run = Run(profile, lay, resolve_dataset(profile, dataset).resolve(), progress, log)
    done: StageLog = run_stages(plan(run, baseline_index), lay.work, log)
    collect_curves(lay)
    baseline = baseline_index or (lay.baseline_index if profile.baseline is not None else None)
    return write_report(run, done, baseline, t_start, load_start)


def collect_curves(lay: Layout) -> None:
    """Copy each trained artifact's curves into ``curves/<stage>.{jsonl,png}``."""
    lay.curves.mkdir(exist_ok=True)
    named = [("teacher", lay.teacher), ("end2end", lay.end2end), ("finetune", lay.finetune)]
    named += [(p.name, p) for p in sorted(lay.root.glob("student*"))]
    for name, src in named:
        for suffix in ("jsonl", "png"):
            if (src / f"curves.{suffix}").is_file():
                shutil.copyfile(src / f"curves.{suffix}", lay.curves / f"{name}.{suffix}")
