"""Fuzzing: schemathesis over every operation of the live server, plus hand-written hostile inputs.

The server serves an index root of three versions with the admin API on, so generated cases reach
``/admin/reload`` and ``/admin/rollback`` for real; a hand-written reload/rollback sequence checks their
effects. The FastAPI schema declares no OpenAPI links, so there is no stateful (link-following) phase.
Every response is checked: no 5xx; every 4xx is the documented ``{"error", "message"}`` body; schemathesis'
response-schema, content-type, header and status-code conformance checks. Failures are counted, never raised.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from common import ADMIN, API_KEY, Server, check, make_root, serving, workdir

V1, V2, V3 = "20000101T000000Z-f00001", "20000102T000000Z-f00002", "20000103T000000Z-f00003"
FIELD = {"/search": "query", "/search/batch": "queries", "/admin/reload": "version"}
DEEP = 10_000
KIB = 1024
SERVER_ERROR = "ST101"  # schemathesis' code for not_a_server_error

# JSON string literals, as sent (lone surrogates only exist as escapes)
TEXTS = {
    "NUL": json.dumps("gene\u0000expression"),
    "lone high surrogate": '"\\ud800"',
    "lone low surrogate after text": '"gene \\udfff"',
    "reversed surrogate pair": '"\\udc00\\ud800"',
    "zero-width chars only": json.dumps("\u200b\u200c\u200d\u2060\ufeff", ensure_ascii=False),
    "zero-width inside a word": json.dumps("vita\u200bmin d", ensure_ascii=False),
    "RTL override, Hebrew, Arabic": json.dumps(
        "\u202e\u05d7\u05dc\u05d1\u05d5\u05df \u0628\u0631\u0648\u062a\u064a\u0646", ensure_ascii=False
    ),
    "emoji and ZWJ sequences": json.dumps(
        "\U0001f9ec \U0001f469\u200d\U0001f52c \U0001f3f3\ufe0f\u200d\U0001f308 gene", ensure_ascii=False
    ),
    "60 KiB single token": json.dumps("a" * 60 * KIB),
    "64 KiB single token": json.dumps("a" * 64 * KIB),
}
NESTED = "[" * DEEP + "]" * DEEP
BIG_INT = "7" * 5000


# --------------------------------------------------------------------------------------------- generated


def _shape_problem(status: int, content: bytes) -> str | None:
    """Why a 4xx body is not ``{"error": str, "message": str[, "details": list]}``, or None."""
    if not 400 <= status < 500:
        return None
    try:
        body = json.loads(content)
    except ValueError:
        return "not JSON"
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not isinstance(body.get("message"), str):
        return "no string error/message"
    extra = set(body) - {"error", "message", "details"}
    return f"unexpected keys {sorted(extra)}" if extra else None


class Tally:
    """Status counts per operation, failures per check (with one example each)."""

    def __init__(self) -> None:
        self.status: Counter[tuple[str, int]] = Counter()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], str] = {}

    def fail(self, what: str, operation: str, example: str) -> None:
        self.failures[(what, operation)] += 1
        self.examples.setdefault((what, operation), example[:400])

    def summary(self) -> dict:
        per_op: dict[str, dict[str, int]] = {}
        for (op, code), n in sorted(self.status.items()):
            per_op.setdefault(op, {})[str(code)] = n
        return {
            "cases": sum(self.status.values()),
            "status": per_op,
            "failures": [
                {"check": what, "operation": op, "count": n, "example": self.examples[(what, op)]}
                for (what, op), n in sorted(self.failures.items())
            ],
        }


def _fuzz_operation(operation: Any, examples: int, tally: Tally, after: Callable[[str, int], None]) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings, strategies
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import Failure, FailureGroup
    from schemathesis.specs.openapi import checks as oc

    conformance = [
        not_a_server_error,
        oc.response_schema_conformance,
        oc.content_type_conformance,
        oc.response_headers_conformance,
        oc.status_code_conformance,
    ]
    modes = [
        operation.as_strategy(generation_mode=mode).map(lambda case, mode=mode: (mode, case))
        for mode in schemathesis.GenerationMode
    ]

    @given(pair=strategies.one_of(modes))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(pair: tuple[Any, Any]) -> None:
        mode, case = pair
        generated = dict(case.headers or {})  # negative cases may carry a wrong key: keep it
        case.headers = generated | ADMIN if mode == schemathesis.GenerationMode.POSITIVE else ADMIN | generated
        response = case.call(timeout=60)
        tally.status[(operation.label, response.status_code)] += 1
        after(operation.label, response.status_code)
        if problem := _shape_problem(response.status_code, response.content):
            tally.fail(f"4xx body: {problem}", operation.label, case.as_curl_command())
        try:
            case.validate_response(response, checks=conformance)
        except (Failure, FailureGroup) as exc:
            for failure in exc.exceptions if isinstance(exc, FailureGroup) else [exc]:
                example = f"HTTP {response.status_code}: {case.as_curl_command()}"
                tally.fail(f"{failure.code} {failure.title}", operation.label, example)

    fuzz()


def _rewind(server: Server, label: str, status: int) -> None:
    """After a rollback found no older version, make the newest current again, so rollbacks keep working."""
    if label == "POST /admin/rollback" and status == 409:
        httpx.post(f"{server.url}/admin/reload", json={"version": V3}, headers=ADMIN, timeout=60).raise_for_status()


def generated(server: Server, cases: int) -> dict:
    """At least ``cases`` generated cases: operations without inputs run out early and leave theirs to the rest."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: len(op.body) > 0)
    tally = Tally()
    for i, operation in enumerate(operations):
        quota = math.ceil(max(0, cases - sum(tally.status.values())) / (len(operations) - i))
        _fuzz_operation(operation, max(quota, 1), tally, lambda label, status: _rewind(server, label, status))
        done = sum(n for (op, _), n in tally.status.items() if op == operation.label)
        print(f"  fuzz: {operation.label}: {done} cases", flush=True)
    return tally.summary() | {"operations": [op.label for op in operations]}


# ------------------------------------------------------------------------------------------ hand-written


def _bodies() -> list[tuple[str, str, str]]:
    """(case, path, raw JSON body) of the hand-written hostile inputs."""
    out = []
    for name, text in TEXTS.items():
        out += [(name, "/search", f'{{"query": {text}, "k": 5}}'), (name, "/search/batch", f'{{"queries": [{text}]}}')]
    for path, field in FIELD.items():
        out += [
            (f"JSON nested {DEEP:,} deep (as {field})", path, f'{{"{field}": {NESTED}}}'),
            (f"JSON nested {DEEP:,} deep (whole body)", path, NESTED),
            (f"JSON objects nested {DEEP:,} deep", path, '{"a":' * DEEP + "0" + "}" * DEEP),
            (f"5,000-digit integer (as {field})", path, f'{{"{field}": {BIG_INT}}}'),
            ("5,000-digit integer (whole body)", path, BIG_INT),
        ]
    query = {"/search": '"query": "gene"', "/search/batch": '"queries": ["gene"]'}
    out += [("5,000-digit integer (as k)", path, f'{{{q}, "k": {BIG_INT}}}') for path, q in query.items()]
    return out


def _schema_problem(path: str, status: int, content: bytes) -> str | None:
    """Why a 2xx body does not match its response model, or None."""
    from pydantic import ValidationError

    from scalingnote.service.schemas import BatchSearchResponse, ReloadResponse, SearchResponse

    if not 200 <= status < 300:
        return _shape_problem(status, content)
    model = {"/search": SearchResponse, "/search/batch": BatchSearchResponse, "/admin/reload": ReloadResponse}[path]
    try:
        model.model_validate_json(content)
    except ValidationError as exc:
        return f"2xx body does not match {model.__name__}: {exc.errors()[0]['msg']}"
    return None


def hand_written(server: Server) -> list[dict]:
    """Send each hostile body; record the status, the error code, and whether the status is documented."""
    results = []
    headers = {"content-type": "application/json"} | ADMIN
    with httpx.Client(base_url=server.url, timeout=60) as client:
        paths = client.get("/openapi.json").json()["paths"]
        for name, path, body in _bodies():
            r = client.post(path, content=body.encode("utf-8"), headers=headers)
            problem = "server error" if r.status_code >= 500 else _schema_problem(path, r.status_code, r.content)
            error = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
            documented = str(r.status_code) in paths[path]["post"]["responses"]
            results.append({"case": name, "path": path, "bytes": len(body.encode()), "status": r.status_code,
                            "error": error, "documented": documented, "problem": problem})  # fmt: skip
    return results


def admin_sequence(server: Server) -> list[dict]:
    """Reload to a version, roll back to the oldest and past it, reload again: statuses and versions served."""
    steps: list[tuple[str, str, dict | None, int, str | None]] = [
        ("POST", "/admin/reload", {"version": V3}, 200, V3),
        ("POST", "/admin/rollback", None, 200, V2),
        ("POST", "/admin/rollback", None, 200, V1),
        ("POST", "/admin/rollback", None, 409, V1),
        ("POST", "/admin/reload", {"version": "../../etc"}, 409, V1),
        ("POST", "/admin/reload", {"version": V3}, 200, V3),
        ("POST", "/admin/reload", None, 200, V3),
        ("GET", "/admin/index", None, 200, V3),
    ]
    out = []
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as client:
        for method, path, body, status, version in steps:
            r = client.request(method, path, json=body)
            served = client.post("/search", json={"query": "gene", "k": 1}).json().get("index_version")
            ok = r.status_code == status and served == version and _shape_problem(r.status_code, r.content) is None
            out.append({"request": f"{method} {path} {json.dumps(body) if body else ''}".strip(),
                        "status": r.status_code, "served": served, "ok": ok})  # fmt: skip
    return out


def server_errors(server: Server) -> int:
    """5xx answers the server itself counted (``scalingnote_requests_total``)."""
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics", timeout=30).text.splitlines():
        if line.startswith("scalingnote_requests_total{") and 'status="5' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def run(args: argparse.Namespace, bundle: Path, index: Path) -> dict:
    with workdir("fuzz") as work:
        root = make_root(work / "root", index, [V1, V2, V3])
        with serving(bundle, root, work, api_key=API_KEY, reload_poll_seconds=0) as server:
            gen = generated(server, args.fuzz_cases)
            sequence = admin_sequence(server)
            hand = hand_written(server)
            five_xx = server_errors(server)
    totals: Counter[int] = Counter()
    for per_op in gen["status"].values():
        totals.update({int(c): n for c, n in per_op.items()})
    totals.update(h["status"] for h in [*hand, *sequence])
    result = {
        "generated": gen,
        "admin_sequence": sequence,
        "hand_written": hand,
        "status_totals": {str(c): n for c, n in sorted(totals.items())},
        "server_5xx_total": five_xx,
    }
    result["checks"] = checks(result, args.fuzz_cases)
    return result


def checks(r: dict, cases: int) -> list[dict]:
    gen = r["generated"]
    fails = Counter()
    for f in gen["failures"]:
        fails[f["check"]] += f["count"]
    shape = sum(n for what, n in fails.items() if what.startswith("4xx body"))
    hand_bad = [f"{h['case']} {h['path']}: {h['problem']}" for h in r["hand_written"] if h["problem"]]
    undocumented = sorted({f"{h['path']} {h['status']}" for h in r["hand_written"] if not h["documented"]})
    server_error_failures = sum(n for what, n in fails.items() if what.startswith(SERVER_ERROR))
    conformance = {what: n for what, n in fails.items() if not what.startswith((SERVER_ERROR, "4xx body"))}
    return [
        check(
            f"fuzz: >= {cases} generated cases over every operation",
            gen["cases"] >= cases and set(gen["status"]) == set(gen["operations"]),
            gen["cases"],
        ),
        check(
            "fuzz: 0 server errors", r["server_5xx_total"] == 0 and server_error_failures == 0, r["server_5xx_total"]
        ),
        check("fuzz: every generated 4xx is {error, message}", shape == 0, shape),
        check("fuzz: schemathesis conformance checks", not conformance, conformance),
        check("fuzz: hand-written inputs (no 5xx, error shape, 2xx schema)", not hand_bad, hand_bad),
        check("fuzz: hand-written inputs' statuses are documented", not undocumented, undocumented),
        check(
            "fuzz: admin reload/rollback sequence",
            all(s["ok"] for s in r["admin_sequence"]),
            [s["request"] for s in r["admin_sequence"] if not s["ok"]],
        ),
    ]


def markdown(r: dict) -> list[str]:
    gen = r["generated"]
    lines = [
        "### Fuzzing",
        "",
        f"schemathesis, {gen['cases']} generated cases (positive and negative) over {len(gen['operations'])} "
        "operations against the live server (index root of 3 versions, admin API on); server-counted 5xx: "
        f"{r['server_5xx_total']}. All answers (generated, hand-written, admin sequence), status: count: "
        f"{', '.join(f'{c}: {n}' for c, n in r['status_totals'].items())}.",
        "",
        "| operation | cases | status: count |",
        "|---|---|---|",
    ]
    for op, per in gen["status"].items():
        lines.append(f"| `{op}` | {sum(per.values())} | {', '.join(f'{c}: {n}' for c, n in per.items())} |")
    lines += ["", "| check failed (schemathesis / error shape) | operation | count |", "|---|---|---|"]
    lines += [f"| {f['check']} | `{f['operation']}` | {f['count']} |" for f in gen["failures"]] or ["| none | | |"]
    lines += ["", "| hand-written input | endpoint | status (error) | documented | problem |", "|---|---|---|---|---|"]
    for h in r["hand_written"]:
        lines.append(
            f"| {h['case']} | `{h['path']}` | {h['status']} ({h['error'] or '–'}) | "
            f"{'yes' if h['documented'] else 'no'} | {h['problem'] or '–'} |"
        )
    return [*lines, ""]
