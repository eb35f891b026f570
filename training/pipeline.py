"""``scalingnote pipeline``: every stage of a profile, declared as data, resumable, ending in ``report.md``.

Output layout under ``--out`` (each directory published atomically):

* ``teacher/``          stage-1 dual tower (``dual.json``, ``query/``, ``doc/``)
* ``teacher-bundle/``   ONNX export of the teacher's query tower (fp32; the latency reference)
* ``teacher-index/``    FAISS index of the corpus embedded by ``teacher/doc``
* ``student/``          distilled query tower (its ``space`` is ``teacher/doc``'s)
* ``bundle/``           ONNX export of ``student/`` (fp32 + int8 when it passes its gate): what ``serve`` loads
* ``student-l<N>/``, ``bundle-l<N>/``  the same for each extra student size (``extra_students``)
* ``teacher-<name>/``, ``teacher-<name>-index/``, ``student-<name>[-l<N>]/`` … for each of ``extra_teachers``
* ``end2end/``, ``end2end-index/``  the student's architecture trained as an ordinary dual tower on the
  teacher's pairs, and the index its own doc tower built (profiles with ``end2end``)
* ``finetune/``         the student trained on labels against the frozen teacher index (profiles with ``finetune``)
* ``baseline-<encoder>-index/``  each off-the-shelf encoder's index (shared across runs through the cache)
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

from scalingnote.choices import runtime_key
from scalingnote.paths import data_root
from scalingnote.training.loop import fingerprint
from scalingnote.training.profiles import Profile, profile_toml
from scalingnote.training.stages import Stage, StageLog, run_stages


@dataclass(frozen=True)
class Layout:
    """Where each artifact of a run lives under its output root (each directory is named after its stage).

    A teacher stage is ``teacher`` or ``teacher-<name>``; its index and bundle add ``-index`` / ``-bundle``.
    """

    root: Path

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher_index(self) -> Path:
        return self.index_dir("teacher")

    def index_dir(self, teacher: str) -> Path:
        return self.root / f"{teacher}-index"

    def teacher_bundle(self, teacher: str = "teacher") -> Path:
        return self.root / f"{teacher}-bundle"

    def student_dir(self, name: str) -> Path:
        return self.root / name

    def bundle_dir(self, student: str) -> Path:
        """``student`` → ``bundle``, ``student-l2`` → ``bundle-l2``, ``student-mpnet`` → ``bundle-mpnet``."""
        return self.root / student.replace("student", "bundle", 1)

    def baseline_index(self, encoder: str) -> Path:
        return self.root / f"baseline-{Path(encoder).name}-index"

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

    @property
    def runtime_key(self) -> list[str]:
        """What stage keys add for a non-default ``encode_runtime`` (so that switching it reruns those stages)."""
        return runtime_key(self.profile.encode_runtime)

    def keyed(self, config: object) -> object:
        """A stage's ``config`` with :attr:`runtime_key` added; ``config`` itself under torch (keys unchanged)."""
        return [config, *self.runtime_key] if self.runtime_key else config

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
        options = {"progress": self.progress, "log": self.log, "runtime": self.profile.encode_runtime}
        return lambda: train_towers(cfg, self.dataset, out, work=work, pseudo=self.pseudo(), **options)

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

    def index(
        self, encoder: str, out: Path, cached: bool = False, max_length: int | None = None, bm25: bool = False
    ) -> Callable[[], object]:
        """Build ``encoder``'s index at ``out``; ``cached``: through the shared index cache (for doc towers that other
        runs or stages have too: off-the-shelf baselines, frozen doc towers); ``bm25``: with its BM25 side (the
        served indexes, so that /search has the hybrid mode)."""
        from scalingnote.index.build import build_index, cached_index

        build = cached_index if cached else build_index
        options = {"max_length": max_length, "batch_size": self.profile.index_batch_size, "bm25": bm25}
        options |= {"runtime": self.profile.encode_runtime}
        return lambda: build(self.dataset, encoder, out, progress=self.progress, **options)

    def export(self, model: Path, bundle: Path, int8: bool, index: Path) -> Callable[[], object]:
        from scalingnote.training.export import export_bundle

        def run() -> object:
            heldout, calibration = self.gate_queries
            cfg = self.profile.export
            return export_bundle(
                str(model),
                bundle,
                index_dir=index,
                queries=heldout,
                calibration=calibration,
                int8=int8,
                min_parity=cfg.min_parity,
                min_overlap=cfg.min_overlap,
                log=self.log,
            )

        return run

    def student(self, name: str, cfg, teacher: str) -> Callable[[], object]:
        from scalingnote.training.distill import distill

        lay = self.lay
        return lambda: distill(
            cfg,
            str(lay.root / teacher),
            self.dataset,
            lay.student_dir(name),
            work=lay.work / name,
            index=lay.index_dir(teacher),
            cache_dir=lay.work / "teacher-queries",
            progress=self.progress,
            log=self.log,
            runtime=self.profile.encode_runtime,
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


def teacher_stages(run: Run, teacher: str, cfg) -> list[Stage]:
    """Stage 1 of one teacher, its index and its fp32 bundle (the latency reference)."""
    lay, out, index = run.lay, run.lay.root / teacher, run.lay.index_dir(teacher)
    d2q = ("doc2query",) if run.profile.doc2query is not None else ()
    train = run.towers(cfg, out, distributed=True)
    bundle = lay.teacher_bundle(teacher)
    return [
        Stage(teacher, out, [cfg.model_dump(), run.data_key, *run.runtime_key], train, d2q),
        Stage(
            index.name,
            index,
            run.keyed("index+bm25"),
            run.index(str(out), index, cached=cfg.doc_tower == "frozen", bm25=True),
            (teacher,),
        ),
        Stage(bundle.name, bundle, "teacher-bundle", run.export(out, bundle, False, index), (index.name,)),
    ]


def student_stages(run: Run, teacher: str) -> list[Stage]:
    """Every student tier of one teacher: its distillation, then its gated ONNX bundle."""
    lay, export, index = run.lay, run.profile.export, run.lay.index_dir(teacher)
    stages = []
    for name, cfg in run.profile.students(teacher):
        student, bundle = lay.student_dir(name), lay.bundle_dir(name)
        stages.append(Stage(name, student, run.keyed(cfg.model_dump()), run.student(name, cfg, teacher), (index.name,)))
        export_fn = run.export(student, bundle, export.int8, index)
        stages.append(Stage(bundle.name, bundle, export.model_dump(), export_fn, (name,)))
    return stages


def baseline_stages(run: Run) -> list[Stage]:
    """The comparisons: end-to-end small dual tower, label fine-tuned student, off-the-shelf indexes."""
    p, lay, stages = run.profile, run.lay, []
    if p.end2end is not None:
        d2q = ("doc2query",) if p.doc2query is not None else ()
        train = run.towers(p.end2end, lay.end2end)
        stages.append(Stage("end2end", lay.end2end, [p.end2end.model_dump(), run.data_key], train, d2q))
        index = run.index(str(lay.end2end), lay.end2end_index)
        stages.append(Stage("end2end-index", lay.end2end_index, "index", index, ("end2end",)))
    if p.finetune is not None:
        stages.append(Stage("finetune", lay.finetune, p.finetune.model_dump(), run.finetune, ("teacher-index",)))
    for encoder in p.baseline_encoders():
        out = lay.baseline_index(encoder)
        key = [encoder, p.baseline_max_length, run.data_key, *run.runtime_key]
        index = run.index(encoder, out, cached=True, max_length=p.baseline_max_length)
        stages.append(Stage(out.name.removesuffix("-index"), out, key, index))
    return stages


def plan(run: Run) -> list[Stage]:
    """Every stage of ``run.profile``, in order."""
    p = run.profile
    stages = []
    if p.doc2query is not None:
        stages.append(Stage("doc2query", run.lay.doc2query, [p.doc2query.model_dump(), run.data_key], run.doc2query))
    for teacher, cfg in p.teachers():
        stages += teacher_stages(run, teacher, cfg)
    for teacher, _ in p.teachers():
        stages += student_stages(run, teacher)
    return stages + baseline_stages(run)


def run_pipeline(
    profile: Profile,
    out: Path,
    *,
    dataset: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run ``profile`` into ``out``; returns the path of ``report.md``."""
    from scalingnote.training.report import write_report

    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    lay = Layout(Path(out).resolve())
    lay.root.mkdir(parents=True, exist_ok=True)
    run = Run(profile, lay, resolve_dataset(profile, dataset).resolve(), progress, log)
    done: StageLog = run_stages(plan(run), lay.work, log)
    collect_curves(lay, profile)
    return write_report(run, done, t_start, load_start)


def collect_curves(lay: Layout, profile: Profile) -> None:
    """Copy each trained artifact's curves into ``curves/<stage>.{jsonl,png}``."""
    lay.curves.mkdir(exist_ok=True)
    names = [t for t, _ in profile.teachers()] + [s for t, _ in profile.teachers() for s, _ in profile.students(t)]
    for name in [*names, "end2end", "finetune"]:
        src = lay.root / name
        for suffix in ("jsonl", "png"):
            if (src / f"curves.{suffix}").is_file():
                shutil.copyfile(src / f"curves.{suffix}", lay.curves / f"{name}.{suffix}")
