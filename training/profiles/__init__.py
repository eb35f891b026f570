"""Pipeline profiles: every hyper-parameter of a run, as a TOML file validated by :class:`Profile`.

The built-in profiles are the ``*.toml`` files next to this module (``demo``, ``cpu``, ``cpu-scale``,
``cpu-llm``, ``gpu``); a user's own file works the same way (``--profile-file``), and ``--set a.b=value``
overrides any field of either. The distillation loss is the paper's, MSE + λ·(1 − cos) on query embeddings,
plus, where a profile sets ``kl_weight``, the ranking term (an extension the distillation ablation measures).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from scalingnote.choices import Runtime
from scalingnote.errors import UserError, validation_message
from scalingnote.training.distill import TEACHER, DistillConfig, StudentConfig
from scalingnote.training.doc2query import Doc2QueryConfig
from scalingnote.training.query_finetune import FinetuneConfig
from scalingnote.training.towers import TowerConfig

BUILTIN_DIR = Path(__file__).parent


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    int8: bool = True
    min_parity: float = 0.9999
    min_overlap: float = 0.95


class Tier(BaseModel):
    """An extra student size: which backbone layers it keeps (``0``: a static student), and optionally its own
    number of steps and learning rate."""

    model_config = ConfigDict(extra="forbid")

    layers: int | list[int]
    steps: int | None = None
    lr: float | None = None


class Targets(BaseModel):
    """What the report checks a run against (besides the baselines measured on the same data)."""

    model_config = ConfigDict(extra="forbid")

    # student layers (0: static) -> least share of its teacher's nDCG@10
    retention: dict[int, float] = {4: 0.97, 2: 0.95, 0: 0.85}
    static_p50_ms: float = 0.1  # a static student's ONNX query encoding (tokenize + graph, batch 1, 1 thread), at most
    latency_ratio: float = 0.40  # student ONNX p50 over its teacher's ONNX p50 (batch 1), at most


class Profile(BaseModel):
    """A whole run. ``towers`` trains the primary teacher (``teacher/``); ``extra_teachers`` (name → recipe)
    train more (``teacher-<name>/``), each distilled into the same student tiers. ``baselines`` are
    encoders measured off the shelf on the same data (default: every teacher's and student's backbone)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    dataset: str = "scifact"
    doc2query: Doc2QueryConfig | None = None
    towers: TowerConfig
    extra_teachers: dict[str, TowerConfig] = {}
    nproc: int = 1
    index_batch_size: int = 64
    encode_runtime: Runtime = "torch"  # what runs the encode-only passes: index builds and the teacher's labels
    distill: DistillConfig
    extra_students: list[int | list[int] | Tier] = []
    end2end: TowerConfig | None = None
    finetune: FinetuneConfig | None = None
    baselines: list[str] | None = None
    baseline_max_length: int | None = None
    export: ExportConfig = ExportConfig()
    targets: Targets = Targets()
    latency_threads: int = 1

    def capped(self, max_steps: int | None = None, max_queries: int | None = None) -> Profile:
        """A copy with every training stage cut to ``max_steps`` and distillation to ``max_queries`` (smoke runs)."""
        p = self.model_copy(deep=True)
        if max_steps is not None:
            for towers in (p.towers, *p.extra_teachers.values()):
                towers.steps = min(towers.steps, max_steps)
            p.distill.steps = min(p.distill.steps, max_steps)
            p.distill.eval_every = min(p.distill.eval_every, max_steps)
            for tier in p.extra_students:
                if isinstance(tier, Tier) and tier.steps:
                    tier.steps = min(tier.steps, max_steps)
            for stage in (p.end2end, p.finetune):
                if stage is not None:
                    stage.steps = min(stage.steps, max_steps)
        if max_queries is not None:
            p.distill.max_queries = max_queries
            p.distill.heldout = min(p.distill.heldout, max_queries // 4)
        return p

    def teachers(self) -> list[tuple[str, TowerConfig]]:
        """``(name, recipe)`` of every teacher: ``teacher``, then ``teacher-<name>`` for each extra one."""
        return [("teacher", self.towers), *((f"teacher-{k}", v) for k, v in self.extra_teachers.items())]

    def students(self, teacher: str = "teacher") -> list[tuple[str, DistillConfig]]:
        """``(name, config)`` of the students of ``teacher``: ``student`` and ``student-l<N>`` (``student-static``
        for no layers) for the primary teacher, ``student-<name>`` and ``student-<name>-l<N>`` for
        ``teacher-<name>``."""
        base = "student" + teacher.removeprefix("teacher")
        tiers = [(base, self.distill)]
        for extra in self.extra_students:
            tier = extra if isinstance(extra, Tier) else Tier(layers=extra)
            student = self.distill.student.model_copy(update={"layers": tier.layers})
            update = {"student": student} | ({"steps": tier.steps} if tier.steps else {})
            update |= {"lr": tier.lr} if tier.lr else {}
            suffix = "static" if student.static else f"l{student.depth}"
            tiers.append((f"{base}-{suffix}", self.distill.model_copy(update=update)))
        return tiers

    def baseline_encoders(self) -> list[str]:
        """The off-the-shelf encoders the report compares with: ``baselines``, else every backbone in the run."""
        if self.baselines is not None:
            return list(self.baselines)
        backbones = [cfg.backbone for _, cfg in self.teachers()] + [self.distill.student.backbone]
        return list(dict.fromkeys(b for b in backbones if b != TEACHER))


def small_dual(teacher: TowerConfig, student: StudentConfig) -> TowerConfig:
    """The paper's end-to-end baseline: the student's architecture trained as an ordinary dual tower with the
    teacher's recipe (same data, steps and negatives)."""
    return teacher.model_copy(update={"layers": student.layers, "query_max_length": student.max_length})


def builtin_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def parse_override(item: str) -> tuple[list[str], object]:
    """``a.b.c=value`` → (``["a", "b", "c"]``, value read as TOML, or as the plain string when it is not TOML)."""
    path, sep, raw = item.partition("=")
    if not sep or not path.strip():
        raise UserError(f"--set {item!r}: expected FIELD.PATH=VALUE, e.g. towers.lr=5e-5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return [p.strip() for p in path.split(".")], value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each ``a.b=value`` into the nested profile dict (tables are created as needed)."""
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {key!r} is not a table of the profile")
            node = child
        node[keys[-1]] = value
    return data


def read_profile_file(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"profile file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None


def load_profile(name: str = "cpu", file: Path | None = None, overrides: list[str] | None = None) -> Profile:
    """A built-in profile by ``name``, or the TOML ``file``; then ``overrides``; validated as a whole."""
    if file is None:
        known = builtin_profiles()
        if name not in known:
            raise UserError(f"unknown profile {name!r} (known: {', '.join(known)}; or --profile-file FILE)")
        file = known[name]
    data = read_profile_file(Path(file))
    data.setdefault("name", Path(file).stem)
    try:
        return Profile.model_validate(apply_overrides(data, overrides or []))
    except ValidationError as exc:
        raise UserError(f"profile {data['name']!r}: {validation_message(exc)}") from None


def profile_toml(profile: Profile) -> str:
    """A profile as TOML (what ``scalingnote profiles show`` prints; loads back to the same profile)."""
    return _toml_table(profile.model_dump(exclude_none=True), [])


def _toml_table(data: dict, path: list[str]) -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"[{'.'.join(path)}]"] if path and scalars else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    text = "\n".join(lines)
    for key, table in tables.items():
        text += "\n\n" + _toml_table(table, [*path, key])
    return text.strip("\n") + ("\n" if not path else "")


def _toml_value(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)
