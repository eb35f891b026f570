"""CPU shares of ``scalingnote serve`` workers: how the CPUs are shared out, and pinning every thread."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scalingnote.service.workers import cpu_slots, pin_process


@pytest.mark.parametrize(
    ("workers", "cpus", "expected"),
    [
        (2, {0, 1}, [{0}, {1}]),
        (2, {0, 1, 2, 3, 4}, [{0, 1, 2}, {3, 4}]),
        (3, {2, 5, 7, 9}, [{2, 5}, {7}, {9}]),
        (3, {4, 6}, [{4}, {6}, {4}]),
        (1, {0, 1}, [{0, 1}]),
    ],
)
def test_cpu_slots_share_the_cpus_out(workers: int, cpus: set[int], expected: list[set[int]]) -> None:
    slots = cpu_slots(workers, cpus)
    assert slots == expected
    assert set().union(*slots) == cpus, "every CPU is used"


THREADS = """
import threading, time
go = threading.Event()
threads = [threading.Thread(target=go.wait) for _ in range(3)]
for t in threads: t.start()
print("ready", flush=True)
input()  # the test pins the process here
later = threading.Thread(target=go.wait)
later.start()
print("started", flush=True)
input()
go.set()
"""


def _affinities(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pin_process_pins_every_thread_and_the_ones_it_starts_later() -> None:
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert len(_affinities(proc.pid)) == 4
        pin_process(proc.pid, {cpu})
        assert _affinities(proc.pid) == [{cpu}] * 4
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "started"
        assert _affinities(proc.pid) == [{cpu}] * 5, "a thread started later inherits the pinning"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
