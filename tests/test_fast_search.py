"""The ASGI fast path of POST /search answers exactly what the FastAPI route answers (same bytes but took_ms),
is the path actually taken for valid bodies, and hands every other request to the route; the per-stage
histograms are in /metrics."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from scalingnote.service.app import create_app
from scalingnote.service.metrics import STAGES
from scalingnote.service.settings import Settings
from tests.conftest import Space

VALID = [
    {"query": "gene expression in cancer cells"},
    {"query": "protein folding", "k": 1},
    {"query": "  leading and trailing spaces  ", "k": 7},
    {"query": "ünïcødé quëry — with dashes", "k": 3},
    {"query": "word " * 400, "k": 2},  # truncated to the bundle's max tokens
    {"query": "gene", "k": 4, "mode": "dense", "fields": ["title", "text"], "score_threshold": -1.0},
    {"query": "gene", "filter": {"ids": ["d0-1", "d0-2", "d0-3"]}, "fields": ["metadata", "nope"]},
]
INVALID: list[tuple[bytes, dict[str, str]]] = [
    (b"{", {}),
    (b'{"query": "x", "k": "10"}', {}),
    (b'{"query": "x", "k": true}', {}),
    (b'{"query": "x", "k": 0}', {}),
    (b'{"query": "x", "mode": "hybrid"}', {}),  # the index holds no BM25
    (b'{"query": "x", "filter": {"fields": {"a": null}}}', {}),
    (b'{"query": "x", "k": 1001}', {}),
    (b'{"query": "   "}', {}),
    (b'{"query": ""}', {}),
    (b'{"query": "x", "extra": 1}', {}),
    (b'{"k": 3}', {}),
    (b"[1, 2]", {}),
    (b'"just a string"', {}),
    (b'{"query": "x", "k": 9.5}', {}),
    (b'{"query": "\\ud800"}', {}),
    (b'{"query": "x"}', {"content-type": "text/plain"}),
    (b'{"query": "x", "k": 200}', {}),  # over max_hits_per_request below
]


def _settings(tiny: Space, fast_path: bool) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, bundle=tiny.bundle, index_root=tiny.index, fast_path=fast_path, max_hits_per_request=100
    )


@pytest.fixture(scope="module")
def clients(tiny: Space) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(create_app(_settings(tiny, True)), raise_server_exceptions=False) as fast,
        TestClient(create_app(_settings(tiny, False)), raise_server_exceptions=False) as route,
    ):
        yield fast, route


def _stage_count(client: TestClient, stage: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf'^scalingnote_stage_seconds_count{{stage="{stage}"}} (\S+)$', text, re.M)
    assert found, f"no {stage} histogram in /metrics"
    return float(found.group(1))


def _without_took(body: dict) -> dict:
    assert body.pop("took_ms") >= 0
    return body


@pytest.mark.parametrize("body", VALID, ids=range(len(VALID)))
def test_valid_bodies_get_the_routes_answer_from_the_fast_path(
    clients: tuple[TestClient, TestClient], body: dict
) -> None:
    fast, route = clients
    parsed = _stage_count(fast, "parse")
    a, b = fast.post("/search", json=body), route.post("/search", json=body)
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
    assert _without_took(a.json()) == _without_took(b.json())
    assert _stage_count(fast, "parse") == parsed + 1, "the fast path answered it"
    assert _stage_count(route, "parse") == 0, "the route never counts a parse stage"


@pytest.mark.parametrize(("body", "headers"), INVALID, ids=range(len(INVALID)))
def test_other_requests_get_the_routes_own_errors(
    clients: tuple[TestClient, TestClient], body: bytes, headers: dict[str, str]
) -> None:
    fast, route = clients
    headers = {"content-type": "application/json"} | headers
    parsed = _stage_count(fast, "parse")
    a = fast.post("/search", content=body, headers=headers)
    b = route.post("/search", content=body, headers=headers)
    assert a.status_code == b.status_code and 400 <= a.status_code < 500, (a.text, b.text)
    assert a.json() == b.json() and set(a.json()) >= {"error", "message"}
    assert _stage_count(fast, "parse") == parsed, "handed on to the route"


def test_every_stage_is_a_histogram_in_metrics(clients: tuple[TestClient, TestClient]) -> None:
    fast, _ = clients
    assert fast.post("/search", json={"query": "stages"}).status_code == 200
    for stage in STAGES:
        assert _stage_count(fast, stage) >= 1, stage
    text = fast.get("/metrics").text
    assert 'scalingnote_stage_seconds_bucket{le="0.0001",stage="encode"}' in text
    assert f'scalingnote_process_info{{pid="{os.getpid()}"}} 1.0' in text  # which worker answered the scrape


def test_the_batch_route_is_unchanged(clients: tuple[TestClient, TestClient]) -> None:
    fast, route = clients
    body = {"queries": ["alpha beta", "gamma"], "k": 2}
    a, b = fast.post("/search/batch", json=body), route.post("/search/batch", json=body)
    assert a.status_code == b.status_code == 200
    assert json.loads(a.text) | {"took_ms": 0} == json.loads(b.text) | {"took_ms": 0}
