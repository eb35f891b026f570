"""Corrupt artifacts: each must be refused with a one-line reason, at start and at reload.

Index cases are tried three ways: served as a plain index directory (the server must exit 2 with one line
on stderr), as the current version of an index root over a good older one (it must start on the good one),
and installed as ``current`` under a running server, then ``POST /admin/reload`` (409; the old version
keeps answering /search). Bundle cases are tried at start only: bundles are not reloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import ADMIN, API_KEY, Server, StartOutcome, check, copy_as_version, make_root, serving, try_start, workdir

from scalingnote.artifacts import BUNDLE_MANIFEST, INDEX_MANIFEST, read_bundle_manifest
from scalingnote.index import versions
from scalingnote.runtime.bundle import pick_variant

GOOD, BAD = "20000101T000000Z-900d01", "20000102T000000Z-bad002"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "index" or "bundle"
    corrupt: Callable[[Path], None]  # applied to a copy of the artifact directory
    source: Path | None = None  # copy this directory instead of the given artifact


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def flip_middle(name: str) -> Callable[[Path], None]:
    return lambda d: flip(d / name, (d / name).stat().st_size // 2)


def truncate(name: str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])

    return apply


def flip_checksum(manifest: str, name: str) -> Callable[[Path], None]:
    """Flip the low bit of the first hex digit of ``name``'s sha256 in a manifest (still valid JSON)."""

    def apply(d: Path) -> None:
        text = (d / manifest).read_text(encoding="utf-8")
        digest = json.loads(text)["files"][name]
        flip(d / manifest, text.encode().index(digest.encode()), 0x01)

    return apply


def flip_syntax(manifest: str) -> Callable[[Path], None]:
    """Flip the low bit of the manifest's first byte: ``{`` becomes ``z``, so it is no longer JSON."""
    return lambda d: flip(d / manifest, 0, 0x01)


def alter_space(d: Path) -> None:
    """Claim another doc tower's embedding space (id and weights hash) in the index manifest."""
    manifest = json.loads((d / INDEX_MANIFEST).read_text(encoding="utf-8"))
    manifest["space"] |= {"id": "another-tower/doc", "sha256": manifest["space"]["sha256"][::-1]}
    (d / INDEX_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def unchanged(d: Path) -> None:
    """No corruption: the artifact itself is the wrong one."""


def cases(bundle: Path, other_index: Path | None) -> list[Case]:
    served = read_bundle_manifest(bundle).variants[pick_variant(read_bundle_manifest(bundle), "auto")]
    onnx = sorted({"model.onnx", served})
    other = [Case("wrong space: index built by another encoder", "index", unchanged, other_index)]
    return [
        Case("index.faiss: one byte flipped", "index", flip_middle("index.faiss")),
        Case("docs.json: one byte flipped", "index", flip_middle("docs.json")),
        Case("index.faiss: truncated to half", "index", truncate("index.faiss")),
        Case("index manifest: a checksum's byte flipped", "index", flip_checksum(INDEX_MANIFEST, "index.faiss")),
        Case("index manifest: first byte flipped (not JSON)", "index", flip_syntax(INDEX_MANIFEST)),
        Case("wrong space: index manifest claims another doc tower", "index", alter_space),
        *(other if other_index is not None else []),
        *(Case(f"{name}: one byte flipped", "bundle", flip_middle(name)) for name in onnx),
        Case(f"{served}: truncated to half", "bundle", truncate(served)),
        Case("bundle manifest: a checksum's byte flipped", "bundle", flip_checksum(BUNDLE_MANIFEST, served)),
        Case("bundle manifest: first byte flipped (not JSON)", "bundle", flip_syntax(BUNDLE_MANIFEST)),
    ]


def refusal(outcome: StartOutcome, work: Path) -> dict:
    """A start that must fail: exit 2, one line on stderr, no traceback."""
    lines = outcome.stderr.strip().splitlines()
    return {
        "exit": outcome.returncode,
        "started_on": outcome.version,
        "stderr_lines": len(lines),
        "traceback": "Traceback" in outcome.stderr,
        "reason": _clean(lines[-1] if lines else "", work),
    }


def fallback(outcome: StartOutcome, work: Path) -> dict:
    """A start on a root whose current version is bad: it must serve the good older version."""
    skipped = [line for line in outcome.stderr.splitlines() if f"skipping index version {BAD}" in line]
    reason = skipped[0].split(f"skipping index version {BAD}: ", 1)[-1] if skipped else ""
    return {"exit": outcome.returncode, "started_on": outcome.version, "reason": _clean(reason, work)}


def _clean(line: str, work: Path) -> str:
    return line.replace(str(work), "<tmp>")


def install_bad(root: Path, case: Case, source: Path, work: Path) -> None:
    """Make ``BAD`` (a copy of ``source``, then corrupted in place) the current version of ``root``."""
    versions.publish_version(copy_as_version(source, work / "bad-src", BAD), root)
    shutil.rmtree(work / "bad-src")
    case.corrupt(versions.version_path(root, BAD))


def remove_bad(root: Path) -> None:
    with versions.locked(root):
        versions.set_current(root, GOOD)
        shutil.rmtree(versions.version_path(root, BAD))


def served_version(server: Server) -> str:
    """The index version a /search answer names (or what came back instead)."""
    r = httpx.post(f"{server.url}/search", json={"query": "vitamin d and bone density", "k": 3}, timeout=30)
    return str(r.json().get("index_version")) if r.status_code == 200 else f"HTTP {r.status_code}"


def at_reload(server: Server, root: Path, case: Case, source: Path, work: Path) -> dict:
    """Install the bad version under the running server, ask it to reload, then check the old one serves."""
    install_bad(root, case, source, work)
    try:
        r = httpx.post(f"{server.url}/admin/reload", headers=ADMIN, timeout=60)
        served = served_version(server)
    finally:
        remove_bad(root)
    try:
        body = r.json()
    except ValueError:
        body = {"message": f"not JSON: {r.text[:200]}"}
    return {
        "status": r.status_code,
        "error": body.get("error"),
        "reason": _clean(str(body.get("message", "")), work),
        "served_after": served,
    }


def index_case(case: Case, bundle: Path, index: Path, server: Server, live: Path, work: Path) -> dict:
    source = case.source or index
    plain = copy_as_version(source, work / "plain", BAD)
    case.corrupt(plain)
    start = refusal(try_start(bundle, plain, work), work)
    shutil.rmtree(plain)
    root = make_root(work / "root", index, [GOOD])
    install_bad(root, case, source, work)
    start_root = fallback(try_start(bundle, root, work), work)
    shutil.rmtree(root)
    return {"start": start, "start_root": start_root, "reload": at_reload(server, live, case, source, work)}


def bundle_case(case: Case, bundle: Path, index: Path, work: Path) -> dict:
    bad = work / "bundle"
    shutil.copytree(bundle, bad)
    case.corrupt(bad)
    try:
        return {"start": refusal(try_start(bad, index, work), work)}
    finally:
        shutil.rmtree(bad)


def run(args: argparse.Namespace, bundle: Path, index: Path) -> dict:
    todo = cases(bundle, args.other_index)
    results = []
    with workdir("corrupt") as work:
        live = make_root(work / "live-root", index, [GOOD])
        with serving(bundle, live, work, api_key=API_KEY, reload_poll_seconds=0) as server:
            for case in todo:
                if case.kind == "index":
                    outcome = index_case(case, bundle, index, server, live, work)
                else:
                    outcome = bundle_case(case, bundle, index, work)
                results.append({"case": case.name, "artifact": case.kind, **outcome})
                print(f"  corrupt: {case.name}: {outcome['start']['reason']}", flush=True)
    return {
        "other_index": str(args.other_index) if args.other_index else None,
        "cases": results,
        "checks": checks(results),
    }


def case_ok(r: dict) -> dict[str, bool]:
    """The conditions of one case (all must hold)."""
    start = r["start"]
    ok = {
        "start refused: exit 2, one line": start["exit"] == 2 and start["stderr_lines"] == 1 and not start["traceback"]
    }
    if r["artifact"] == "index":
        root, reload = r["start_root"], r["reload"]
        ok["root start serves the good version"] = root["started_on"] == GOOD and bool(root["reason"])
        ok["reload refused (409), old version serves"] = (
            reload["status"] == 409 and reload["error"] == "conflict" and reload["served_after"] == GOOD
        )
    return ok


def checks(results: list[dict]) -> list[dict]:
    return [
        check(f"corrupt: {r['case']}", all(case_ok(r).values()), [k for k, v in case_ok(r).items() if not v])
        for r in results
    ]


def markdown(r: dict) -> list[str]:
    lines = [
        "### Corrupt artifacts",
        "",
        "Start: plain index dir or corrupt bundle (must exit 2 with one line on stderr); root: the bad version is "
        "`current` over a good older one (must start on the good one); reload: `POST /admin/reload` onto it "
        "(must answer 409 while the old version serves on). Reasons as printed (temp paths shortened).",
        "",
        "| case | start | root start | reload | reason |",
        "|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        s = c["start"]
        start = f"exit {s['exit']}, {s['stderr_lines']} line" + ("s" if s["stderr_lines"] != 1 else "")
        root = reload = "n/a (not reloaded)"
        if c["artifact"] == "index":
            root = "good version" if c["start_root"]["started_on"] == GOOD else f"{c['start_root']['started_on']}"
            rl = c["reload"]
            reload = (
                f"{rl['status']}, old serves" if rl["served_after"] == GOOD else f"{rl['status']}, {rl['served_after']}"
            )
        lines.append(f"| {c['case']} | {start} | {root} | {reload} | `{s['reason']}` |")
    return [*lines, ""]
