"""bench/serve's per-stage figures: the /metrics scrapes of several workers, told apart by pid and summed."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from scalingnote.service.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(REPO / "bench" / "serve"))
    import run  # bench/serve/run.py

    yield run
    sys.modules.pop("run", None)


def _scrape(metrics: Metrics, pid: str) -> str:
    """``metrics`` rendered as if the process ``pid`` (one worker of several) had answered."""
    return metrics.render().decode().replace(f'pid="{os.getpid()}"', f'pid="{pid}"')


def test_stage_delta_sums_the_workers_seen_before_and_after(bench_run: ModuleType) -> None:
    a, b, late = Metrics(), Metrics(), Metrics()
    a.stages["encode"].observe(0.001)
    before = {"1": _scrape(a, "1"), "2": _scrape(b, "2")}
    a.stages["encode"].observe(0.002)
    b.stages["encode"].observe(0.004)
    b.stages["encode"].observe(0.004)
    late.stages["encode"].observe(1.0)  # a worker scraped only after the run: its totals are not this run's
    after = {"1": _scrape(a, "1"), "2": _scrape(b, "2"), "3": _scrape(late, "3")}
    encode = bench_run.stage_delta(before, after)["encode"]
    assert encode["count"] == 3
    assert encode["mean_ms"] == pytest.approx(10 / 3, rel=1e-3)
    assert "parse" not in bench_run.stage_delta(before, after)  # no observation in the run
    # one worker's scrape before and another's after gives nothing rather than a negative delta
    assert bench_run.stage_delta({"1": before["1"]}, {"2": after["2"]}) == {}
