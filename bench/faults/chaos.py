"""Chaos: ``kill -9`` of ``scalingnote index rebuild`` / ``index publish`` at each step, under 100 req/s.

How a step is hit: the writer runs in short slices (SIGCONT, sleep, SIGSTOP); while it is frozen the index root
is read to see which step it is in (partial shards: embedding; ``versions/.<new>.tmp-*``: publish's copy;
``.next`` or a new ``versions/<id>`` while ``current`` is unchanged: adopt; ``current`` repointed but the
doomed versions still there: set_current; ``versions/.<old>.tmp-*``: prune). It is SIGKILLed while frozen in
the target step, so the state it dies in is the state that was read. A step passed by within one slice is
retried with a new run (``--chaos-attempts``). set_current lasts microseconds, so there the writer runs with
``SCALINGNOTE_FAILPOINT=set_current`` and stops itself just after repointing ``current`` (:mod:`index.versions`).

After each kill: no request failed, ``current`` verifies (sha256), the server serves it, and a rerun succeeds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    SCALINGNOTE,
    Server,
    check,
    copy_as_version,
    env,
    loadgen,
    search_bodies,
    serving,
    tail_line,
    workdir,
)

from scalingnote.artifacts import (
    INDEX_MANIFEST,
    new_version_id,
    read_bundle_manifest,
    read_index_manifest,
    write_manifest,
)
from scalingnote.errors import UserError
from scalingnote.index import versions
from scalingnote.index.build import work_dir

STEPS = ("embedding", "copy", "adopt", "set_current", "prune")
FAILPOINTS = ("set_current",)
ORDER = ("starting", "embedding", "write", "copy", "adopt", "set_current", "prune", "done")
COARSE_S, FINE_S = 0.02, 0.0003
FREEZE_TIMEOUT_S = 5.0
SETTLE_TIMEOUT_S = 60.0
SHARD_SIZE = 25
LOAD_CHUNK_S = 5.0


# ------------------------------------------------------------------------------------------------ inputs


def write_subset(source: Path, dest: Path, n_docs: int) -> Path:
    """The first ``n_docs`` documents of a BEIR dataset, with the queries and qrels that refer to them."""
    dest.mkdir(parents=True)
    docs = (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:n_docs]
    (dest / "corpus.jsonl").write_text("\n".join(docs) + "\n", encoding="utf-8")
    ids = {json.loads(line)["_id"] for line in docs}
    (dest / "qrels").mkdir()
    kept: set[str] = set()
    for qrels in sorted((source / "qrels").glob("*.tsv")):
        header, *rows = qrels.read_text(encoding="utf-8").splitlines()
        rows = [r for r in rows if r.split("\t")[1] in ids]
        kept |= {r.split("\t")[0] for r in rows}
        (dest / "qrels" / qrels.name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    queries = (source / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    (dest / "queries.jsonl").write_text(
        "".join(q + "\n" for q in queries if json.loads(q)["_id"] in kept), encoding="utf-8"
    )
    return dest


def doc_encoder(spec: str | None, index: Path) -> str:
    """The doc encoder that built ``index``: ``spec``, else a dual tower next to it with the index's space."""
    space = read_index_manifest(index).space
    if spec:
        return spec
    for dual in sorted(index.resolve().parent.glob("*/dual.json")):
        if json.loads(dual.read_text(encoding="utf-8")).get("space", {}).get("sha256") == space.sha256:
            return str(dual.parent)
    raise UserError(f"cannot tell which doc encoder built {index} ({space.id}): pass --doc-encoder")


def needs_force(encoder: str, bundle: Path) -> bool:
    """Whether ``encoder`` embeds into another space than the bundle targets (the rebuild must be forced)."""
    from scalingnote.specs import doc_space, resolve

    return doc_space(resolve(encoder)).sha256 != read_bundle_manifest(bundle).space.sha256


# ------------------------------------------------------------------------------------------- root states


@dataclass(frozen=True)
class Before:
    """The root before a writer ran, and the versions its prune will delete."""

    current: str | None
    versions: tuple[str, ...]
    doomed: tuple[str, ...]

    @classmethod
    def of(cls, root: Path, keep: int) -> Before:
        have = tuple(versions.list_versions(root))
        doomed = have[: max(0, len(have) + 1 - keep)]
        return cls(versions.current_version(root), have, doomed)


def stage(root: Path, before: Before) -> str:
    """Which step a (frozen) writer is in, read from the root; see the module docstring."""
    hidden = [p.name[1:].rsplit(".tmp-", 1)[0] for p in versions.versions_dir(root).glob(".*.tmp-*")]
    have = versions.list_versions(root)
    if any(v in before.versions for v in hidden):
        return "prune"
    if versions.current_version(root) != before.current:
        gone = before.doomed and not any(v in have for v in before.doomed)
        return "done" if gone else "set_current"
    if (root / versions.NEXT).is_dir() or any(v not in before.versions for v in have):
        return "adopt"
    if hidden:
        return "copy"
    if any(root.glob(f".{versions.NEXT}.tmp-*")):
        return "write"
    shards = work_dir(root / versions.NEXT) / "shards"
    return "embedding" if len(list(shards.glob("?????.npy"))) >= 2 else "starting"


def _frozen(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (or gone)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] not in "TtZX":
                return False
        except (OSError, IndexError):
            continue
    return True


def _freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + FREEZE_TIMEOUT_S
    while not _frozen(pid) and time.monotonic() < deadline:
        time.sleep(0.0001)


def kill_at(proc: subprocess.Popen[bytes], root: Path, target: str, before: Before, timeout: float) -> str:
    """Run ``proc`` in slices; SIGKILL it while frozen in ``target``. Returns the step it died in, or why not."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        _freeze(proc.pid)
        now = stage(root, before)
        if now == target:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return now
        os.kill(proc.pid, signal.SIGCONT)
        if ORDER.index(now) > ORDER.index(target):
            return f"missed (next seen: {now})"
        time.sleep(FINE_S if target == "copy" or now not in ("starting", "embedding") else COARSE_S)
    return f"missed (exited {proc.returncode})" if proc.poll() is not None else "missed (timed out)"


# ----------------------------------------------------------------------------------------------- the load


@dataclass
class SteadyLoad:
    """Fixed-rate load in back-to-back bounded loadgen runs on a thread, from ``start()`` to ``stop()``."""

    port: int
    bodies: Path
    rate: float
    max_s: float
    runs: list[Any] = field(default_factory=list)  # loadgen.LoadResult
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        binary, deadline = loadgen.build(), time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.runs.append(
                    loadgen.run(
                        binary, self.port, self.bodies, rate=self.rate, duration=LOAD_CHUNK_S, capture="index_version"
                    )
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                self.errors.append(str(exc))
                return

    def start(self) -> SteadyLoad:
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(LOAD_CHUNK_S + 60)
        status: Counter[str] = Counter()
        served: list[str] = []
        for run in self.runs:
            status.update(str(int(s)) for s in run.status)
            for version in run.captured:
                if version and (not served or served[-1] != version):
                    served.append(version)
        return {
            "requests": sum(len(r.status) for r in self.runs),
            "failed": sum(r.failed for r in self.runs),
            "status": dict(status),
            "versions_served": served,
            "errors": self.errors,
        }


# ------------------------------------------------------------------------------------------------ one step


@dataclass
class Setup:
    root: Path
    bundle: Path
    dataset: Path
    encoder: str
    force: bool
    publish_source: Path
    logs: Path


def command(step: str, setup: Setup, keep: int) -> list[str]:
    if step == "copy":
        return [str(SCALINGNOTE), "index", "publish", "--index", str(setup.publish_source), "--root", str(setup.root),
                "--keep", str(keep)]  # fmt: skip
    cmd = [str(SCALINGNOTE), "index", "rebuild", "--dataset", str(setup.dataset), "--doc-encoder", setup.encoder,
           "--root", str(setup.root), "--keep", str(keep), "--bundle", str(setup.bundle),
           "--shard-size", str(SHARD_SIZE), "--batch-size", str(SHARD_SIZE)]  # fmt: skip
    return [*cmd, "--force"] if setup.force else cmd


def failpoint(step: str) -> dict[str, str]:
    """The writer's extra settings: a self-stop at steps too short to freeze from outside."""
    return {"failpoint": step} if step in FAILPOINTS else {}


def renew(index: Path) -> None:
    """Give ``index`` a new version id, so that publishing it copies it again."""
    write_manifest(index, INDEX_MANIFEST, read_index_manifest(index).model_copy(update={"version": new_version_id()}))


def settled(root: Path, server_version: Callable[[], str | None], timeout: float = SETTLE_TIMEOUT_S) -> dict:
    """Wait until the server serves what ``current`` names; then verify ``current``'s checksums."""
    current = versions.current_version(root)
    deadline = time.monotonic() + timeout
    while (served := server_version()) != current and time.monotonic() < deadline:
        time.sleep(0.25)
    try:
        read_index_manifest(versions.current_path(root), verify=True)
        problem = None
    except (UserError, OSError) as exc:
        problem = str(exc)
    return {"current": current, "served": served, "current_valid": problem is None, "problem": problem}


def rerun(cmd: list[str], timeout: float) -> dict:
    """Run the killed command again to completion: its exit status and last line of output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "last_line": f"timed out after {timeout:g} s"}
    return {"returncode": proc.returncode, "last_line": tail_line(proc.stdout or proc.stderr)}


def leftovers(root: Path) -> list[str]:
    """Staging, partial and hidden entries still in the root (none should survive a finished writer)."""
    names = [
        p.name
        for p in root.iterdir()
        if p.name.startswith(".") and p.name not in (".lock", ".build.lock", versions.EMBEDDINGS)
    ]
    return sorted(names + [f"versions/{p.name}" for p in versions.versions_dir(root).glob(".*")])


def kill_step(step: str, setup: Setup, server: Server, bodies: Path, args: argparse.Namespace) -> dict:
    """Kill a writer in ``step`` (up to ``--chaos-attempts`` runs), check, rerun it, check again."""
    keep = 1 if step == "prune" else 2
    cmd = command(step, setup, keep)
    load = SteadyLoad(server.port, bodies, args.chaos_rate, max_s=4 * args.chaos_timeout).start()
    attempts: list[str] = []
    started = time.monotonic()
    try:
        for n in range(args.chaos_attempts):
            if step == "copy":
                renew(setup.publish_source)
            before = Before.of(setup.root, keep)
            with (setup.logs / f"{step}-{n}.log").open("wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(**failpoint(step)))
            try:
                attempts.append(kill_at(proc, setup.root, step, before, args.chaos_timeout))
                proc.wait(args.chaos_timeout)  # a missed step: let the writer finish
            except subprocess.TimeoutExpired:
                attempts[-1] += ", then timed out"
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if attempts[-1] == step:
                break
        at_kill = {"versions": versions.list_versions(setup.root), "staging": leftovers(setup.root)}
        after_kill = settled(setup.root, server.version)
        again = rerun(cmd, args.chaos_timeout)
        after_rerun = settled(setup.root, server.version)
    finally:
        traffic = load.stop()
    return {
        "step": step,
        "command": " ".join(cmd[1:3]),
        "attempts": attempts,
        "killed": attempts[-1] == step,
        "root_at_kill": at_kill,
        "after_kill": after_kill,
        "rerun": again,
        "after_rerun": after_rerun,
        "leftovers_after_rerun": leftovers(setup.root),
        "load": traffic,
        "wall_s": round(time.monotonic() - started, 1),
    }


def step_ok(r: dict) -> dict[str, bool]:
    """The conditions of one step (all must hold)."""
    return {
        "killed in the step": r["killed"],
        "0 failed requests": r["load"]["failed"] == 0 and not r["load"]["errors"] and r["load"]["requests"] > 0,
        "current valid after the kill": r["after_kill"]["current_valid"],
        "server serves current after the kill": r["after_kill"]["served"] == r["after_kill"]["current"],
        "rerun succeeds": r["rerun"]["returncode"] == 0 and r["after_rerun"]["current_valid"],
        "server serves the rerun's version": r["after_rerun"]["served"] == r["after_rerun"]["current"],
        "no leftovers after the rerun": not r["leftovers_after_rerun"],
    }


def run(args: argparse.Namespace, bundle: Path, index: Path) -> dict:
    encoder = doc_encoder(args.doc_encoder, index)
    force = needs_force(encoder, bundle)
    with workdir("chaos") as work:
        root = work / "root"
        versions.publish_version(index, root)
        (work / "logs").mkdir()
        setup = Setup(
            root,
            bundle,
            write_subset(args.chaos_dataset, work / "dataset", args.chaos_docs),
            encoder,
            force,
            copy_as_version(index, work / "publish-source", new_version_id()),
            work / "logs",
        )
        bodies = search_bodies(work / "search.jsonl", args.queries)
        with serving(bundle, root, work, reload_poll_seconds=args.chaos_poll_seconds) as server:
            steps = [kill_step(step, setup, server, bodies, args) for step in args.chaos_steps]
    result = {
        "doc_encoder": encoder,
        "forced": force,
        "docs": args.chaos_docs,
        "rate": args.chaos_rate,
        "poll_seconds": args.chaos_poll_seconds,
        "steps": steps,
    }
    result["checks"] = [
        check(f"chaos: kill -9 at {r['step']}", all(step_ok(r).values()), [k for k, v in step_ok(r).items() if not v])
        for r in steps
    ]
    return result


def _served(state: dict) -> str:
    return "= current" if state["served"] == state["current"] else str(state["served"])


def markdown(r: dict) -> list[str]:
    lines = [
        "### Chaos: `kill -9` of a rebuild / publish",
        "",
        f"Rebuilds of {r['docs']} SciFact docs with `{Path(r['doc_encoder']).name}`"
        f"{' (--force)' if r['forced'] else ''}; publish of the given index as a new version; "
        f"{r['rate']:g} req/s throughout, server polling `current` every {r['poll_seconds']:g} s.",
        "",
        "| step | command | killed in it (attempts) | requests (failed) | current after kill | served | rerun | "
        "served after rerun |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in r["steps"]:
        k, rr = s["after_kill"], s["after_rerun"]
        lines.append(
            f"| {s['step']} | `{s['command']}` | {'yes' if s['killed'] else 'no'} ({len(s['attempts'])}) | "
            f"{s['load']['requests']} ({s['load']['failed']}) | {'valid' if k['current_valid'] else 'INVALID'} | "
            f"{_served(k)} | exit {s['rerun']['returncode']} | {_served(rr)} |"
        )
    return [*lines, ""]
