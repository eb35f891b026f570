"""A generic, resumable stage runner: each stage is declared as data and keyed by its inputs.

A stage's key is the fingerprint of its own configuration and of the keys of the stages it reads. A stage
whose output exists and whose stamp (``<work>/<name>/stage.json``) holds the same key is skipped, so an
interrupted run continues where it stopped and a changed setting reruns exactly what depends on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scalingnote.artifacts import now_iso
from scalingnote.training.loop import fingerprint


@dataclass(frozen=True)
class Stage:
    """``run()`` builds ``output``; ``config`` and the keys of the ``after`` stages decide when it must rerun."""

    name: str
    output: Path
    config: object
    run: Callable[[], object]
    after: tuple[str, ...] = ()


@dataclass
class StageLog:
    """What a run did: each stage's key and seconds (from its stamp when skipped), and which were skipped."""

    keys: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def run_stages(stages: Sequence[Stage], work: Path, log: Callable[[str], None] = print) -> StageLog:
    """Run ``stages`` in order (each after those it reads), skipping the ones that are up to date."""
    done = StageLog()
    for stage in stages:
        missing = [u for u in stage.after if u not in done.keys]
        if missing:
            raise ValueError(f"stage {stage.name!r} reads {missing}, which run later or not at all")
        key = done.keys[stage.name] = fingerprint(stage.config, [done.keys[u] for u in stage.after])
        stamp = work / stage.name / "stage.json"
        previous = json.loads(stamp.read_text(encoding="utf-8")) if stamp.is_file() else {}
        if stage.output.exists() and previous.get("key") == key:
            log(f"[{stage.name}] up to date ({stage.output}), skipped")
            done.seconds[stage.name] = float(previous.get("seconds", 0.0))
            done.skipped.append(stage.name)
            continue
        log(f"[{stage.name}] running -> {stage.output}")
        t0 = time.monotonic()
        stage.run()
        seconds = done.seconds[stage.name] = time.monotonic() - t0
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"key": key, "seconds": seconds, "finished_at": now_iso()}) + "\n")
        log(f"[{stage.name}] done in {seconds / 60:.1f} min")
    return done
