"""Named pipeline profiles: every hyper-parameter of a run, sized for the hardware it targets.

* ``demo``: stage 1 + teacher index + distilled student + export only (≤12 min on 2 CPU cores).
* ``cpu``: the full comparison on 2 CPU cores (≤30 min): MiniLM dual-tower teacher, distilled 4- and
  2-layer students, the 2-layer student trained end to end as an ordinary dual tower, off-the-shelf and BM25.
* ``cpu-llm``: the same with a SmolLM2-135M dual-tower teacher (fp32: bf16 autocast is slower on these CPUs).
* ``gpu``: SmolLM2-135M teacher with doc2query pairs and large batches (one or more CUDA GPUs; untested here).

The distillation loss of every profile is the paper's: MSE + λ·(1 − cos) on query embeddings only
(``kl_weight`` = 0; ranking distillation over the teacher's top documents is an opt-in extension).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from scalingnote.errors import UserError
from training.distill import DistillConfig, StudentConfig
from training.doc2query import Doc2QueryConfig
from training.query_finetune import FinetuneConfig
from training.towers import TowerConfig


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    int8: bool = True
    min_parity: float = 0.9999
    min_overlap: float = 0.95


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    dataset: str = "scifact"
    doc2query: Doc2QueryConfig | None = None
    towers: TowerConfig
    nproc: int = 1
    index_batch_size: int = 64
    distill: DistillConfig
    extra_students: list[int] = []
    end2end: TowerConfig | None = None
    finetune: FinetuneConfig | None = None
    baseline: str | None = None
    export: ExportConfig = ExportConfig()
    latency_threads: int = 1

    def capped(self, max_steps: int | None = None, max_queries: int | None = None) -> Profile:
        """A copy with every training stage cut to ``max_steps`` and distillation to ``max_queries`` (smoke runs)."""
        p = self.model_copy(deep=True)
        if max_steps is not None:
            p.towers.steps = min(p.towers.steps, max_steps)
            p.distill.steps = min(p.distill.steps, max_steps)
            p.distill.eval_every = min(p.distill.eval_every, max_steps)
            for stage in (p.end2end, p.finetune):
                if stage is not None:
                    stage.steps = min(stage.steps, max_steps)
        if max_queries is not None:
            p.distill.max_queries = max_queries
            p.distill.heldout = min(p.distill.heldout, max_queries // 4)
        return p

    def students(self) -> list[tuple[str, DistillConfig]]:
        """``(name, config)`` of every distilled student: the primary ``student`` and ``student-l<N>`` extras."""
        extra = [
            (
                f"student-l{n}",
                self.distill.model_copy(update={"student": self.distill.student.model_copy(update={"layers": n})}),
            )
            for n in self.extra_students
        ]
        return [("student", self.distill), *extra]


def small_dual(teacher: TowerConfig, student: StudentConfig, **updates: object) -> TowerConfig:
    """The paper's end-to-end baseline: the student's architecture trained as an ordinary dual tower on the
    teacher's pairs with the teacher's recipe (same data, steps and negatives)."""
    return teacher.model_copy(update={"layers": student.layers, "query_max_length": student.max_length, **updates})


DISTILL_SOURCES = ["train", "titles", "sentences", "msmarco-passage-dev-small/queries.tsv"]
STUDENT_L4 = StudentConfig(backbone="minilm-l6", layers=4, max_length=64)
STUDENT_L2 = STUDENT_L4.model_copy(update={"layers": 2})
# MiniLM-L6 teacher: docs cut to 128 tokens, in training (2x cheaper steps, so more of them) and in its index.
MINILM_TEACHER = TowerConfig(backbone="minilm-l6", doc_max_length=128, steps=200, batch_size=32, negatives=0, lr=3e-5)
SMOLLM2_CPU = TowerConfig(
    backbone="smollm2-135m",
    pooling="mean",
    doc_max_length=128,
    query_max_length=48,
    steps=100,  # fp32, measured here: ~16 s/step; + 13 min to index 5,183 docs at 6.8 docs/s: fits 1 h
    batch_size=16,
    negatives=1,
    lr=1e-4,
    freeze_embeddings=True,
    checkpoint_every_s=600,
)

PROFILES: dict[str, Profile] = {
    "demo": Profile(
        name="demo",
        description="Teacher + index + distilled 4-layer student + ONNX bundle: the quickest useful build (2 cores).",
        towers=MINILM_TEACHER.model_copy(update={"steps": 60}),
        distill=DistillConfig(student=STUDENT_L4, sources=DISTILL_SOURCES, steps=200, lr=1.5e-3),
    ),
    "cpu": Profile(
        name="cpu",
        description="MiniLM-L6 dual-tower teacher, distilled 4- and 2-layer students, the 2-layer student "
        "trained end to end as a dual tower; 2 CPU cores, ≤30 min.",
        towers=MINILM_TEACHER,
        distill=DistillConfig(student=STUDENT_L4, sources=DISTILL_SOURCES, steps=300, lr=1.5e-3),
        extra_students=[2],
        end2end=small_dual(MINILM_TEACHER, STUDENT_L2),
        baseline="minilm-l6",
    ),
    "cpu-llm": Profile(
        name="cpu-llm",
        description="SmolLM2-135M dual-tower teacher (mean pooling), distilled 4-layer MiniLM student; "
        "bounded to ≈1 h on 2 cores.",
        towers=SMOLLM2_CPU,
        index_batch_size=32,
        # the LLM teacher embeds queries slowly on CPU: 8,192 of them are 2.4 passes of 300 steps × 64
        distill=DistillConfig(student=STUDENT_L4, sources=DISTILL_SOURCES, steps=300, lr=1.5e-3, max_queries=8192),
        baseline="minilm-l6",
    ),
    "gpu": Profile(
        name="gpu",
        description="SmolLM2-135M teacher (last-token + EOS) on judged + title + doc2query pairs; CUDA GPU(s).",
        doc2query=Doc2QueryConfig(model="smollm2-135m", per_doc=3, batch_size=64),
        towers=TowerConfig(
            backbone="smollm2-135m",
            pooling="last-token",
            query_prefix="query: ",
            doc_prefix="passage: ",
            doc_max_length=256,
            steps=1500,
            batch_size=128,
            negatives=3,
            lr=5e-5,
            temperature=0.02,
            checkpoint_every_s=900,
        ),
        index_batch_size=256,
        distill=DistillConfig(
            student=STUDENT_L4, sources=DISTILL_SOURCES, steps=6000, batch_size=256, lr=3e-4, eval_every=500
        ),
        extra_students=[2],
        end2end=TowerConfig(backbone="minilm-l6", layers=4, steps=1500, batch_size=128, negatives=3, lr=5e-5),
        finetune=FinetuneConfig(student=STUDENT_L4, steps=2000, batch_size=256, lr=3e-4),
        baseline="minilm-l6",
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    return PROFILES[name]
