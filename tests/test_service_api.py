"""The HTTP contract of the service, in process (real ONNX Runtime + FAISS over a tiny tower).

Covers every bad-input rule of issue #4: each is a 4xx with a JSON body and a message, never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from scalingnote.artifacts import read_index_manifest
from scalingnote.service.app import create_app
from scalingnote.service.settings import Settings
from tests.conftest import Space

API_KEY = "test-key-0123456789abcdef0123456789ab"


def _settings(tiny: Space, **overrides: object) -> Settings:
    base: dict = {"bundle": tiny.bundle, "index_root": tiny.index, "api_key": API_KEY, "max_body_bytes": 4096}
    return Settings(_env_file=None, **(base | {"max_batch_queries": 4} | overrides))  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def client(tiny: Space) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tiny)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def docs(tiny: Space) -> list[dict]:
    return [json.loads(line) for line in (tiny.corpus / "corpus.jsonl").read_text().splitlines()]


def _text(doc: dict) -> str:
    return f"{doc['title']} {doc['text']}".strip()


def _assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"], body
    return body


def test_search_finds_the_document_it_quotes(client: TestClient, docs: list[dict], tiny: Space) -> None:
    doc = docs[5]
    r = client.post("/search", json={"query": _text(doc), "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"results", "took_ms", "index_version", "truncated"}
    assert body["index_version"] == read_index_manifest(tiny.index).version and body["truncated"] is False
    assert len(body["results"]) == 3 and body["took_ms"] > 0
    top = body["results"][0]
    assert top["id"] == doc["_id"] and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top.get("title") == doc["title"]
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_untitled_documents_have_no_title_field(client: TestClient, docs: list[dict]) -> None:
    doc = docs[3]
    assert doc["title"] == ""
    top = client.post("/search", json={"query": _text(doc), "k": 1}).json()["results"][0]
    assert top["id"] == doc["_id"] and "title" not in top


def test_k_defaults_to_10_and_caps_at_the_corpus(client: TestClient) -> None:
    assert len(client.post("/search", json={"query": "gene"}).json()["results"]) == 10
    assert len(client.post("/search", json={"query": "gene", "k": 1000}).json()["results"]) == 200


def test_batch_answers_each_query_in_order(client: TestClient, docs: list[dict]) -> None:
    picked = [docs[1], docs[7], docs[42]]
    r = client.post("/search/batch", json={"queries": [_text(d) for d in picked], "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [resp["results"][0]["id"] for resp in body["responses"]] == [d["_id"] for d in picked]
    assert all(len(resp["results"]) == 2 and resp["truncated"] is False for resp in body["responses"])
    assert body["index_version"] and body["took_ms"] > 0


def test_over_long_queries_are_truncated_and_say_so(client: TestClient) -> None:
    long_query = " ".join(["protein"] * 200)  # > the bundle's 64 tokens
    r = client.post("/search", json={"query": long_query})
    assert r.status_code == 200 and r.json()["truncated"] is True
    r = client.post("/search/batch", json={"queries": ["short one", long_query]})
    assert [resp["truncated"] for resp in r.json()["responses"]] == [False, True]


BAD_BODIES = {
    "empty query": {"query": ""},
    "whitespace query": {"query": " \t\n "},
    "k zero": {"query": "x", "k": 0},
    "k too large": {"query": "x", "k": 1001},
    "k negative": {"query": "x", "k": -3},
    "k as string": {"query": "x", "k": "5"},
    "k as float": {"query": "x", "k": 5.0},
    "k as bool": {"query": "x", "k": True},
    "query as number": {"query": 123},
    "query as list": {"query": ["a"]},
    "query null": {"query": None},
    "missing query": {"k": 3},
    "unknown field": {"query": "x", "top_k": 3},
    "array body": ["x"],
    "string body": "x",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_search_bodies_get_422(client: TestClient, body: object) -> None:
    _assert_error(client.post("/search", json=body), 422, "invalid_request")


BAD_BATCHES = {
    "no queries": {"queries": []},
    "too many queries": {"queries": ["a", "b", "c", "d", "e"]},
    "blank query in batch": {"queries": ["a", "  "]},
    "unknown field": {"queries": ["a"], "n": 1},
    "queries as string": {"queries": "a"},
}


@pytest.mark.parametrize("body", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_bad_batch_bodies_get_422(client: TestClient, body: object) -> None:
    _assert_error(client.post("/search/batch", json=body), 422, "invalid_request")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"{not json", "application/json"), (b"query=x", "application/x-www-form-urlencoded"), (b"x", "text/plain"),
     (b"", "application/json"), (b"\xff\xfe", "application/json"), (b"\x80abc", "application/json"),
     (b"[" * 2000 + b"]" * 2000, "application/json")],
    ids=["invalid json", "form", "text", "empty", "not utf-8", "bad utf-8", "nested 2000 deep"],
)  # fmt: skip
def test_non_json_bodies_get_422(client: TestClient, content: bytes, content_type: str) -> None:
    body = _assert_error(client.post("/search", content=content, headers={"content-type": content_type}), 422,
                         "invalid_request")  # fmt: skip
    assert "{not json" not in body["message"], "the input is not echoed"


def test_body_over_the_byte_limit_gets_413(client: TestClient) -> None:
    big = json.dumps({"query": "x" * 5000})
    _assert_error(client.post("/search", content=big, headers={"content-type": "application/json"}), 413,
                  "body_too_large")  # fmt: skip

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        yield big[:3000].encode()
        yield big[3000:].encode()

    _assert_error(client.post("/search", content=chunks(), headers={"content-type": "application/json"}), 413,
                  "body_too_large")  # fmt: skip
    ok = json.dumps({"query": "x" * 3000})
    assert client.post("/search", content=ok, headers={"content-type": "application/json"}).status_code == 200


def test_health_ready_metrics_docs(client: TestClient, tiny: Space) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    version = read_index_manifest(tiny.index).version
    assert client.get("/readyz").json() == {"status": "ready", "index_version": version}
    client.post("/search", json={"query": "gene"})
    text = client.get("/metrics").text
    for needle in (
        'scalingnote_requests_total{route="/search",status="200"}',
        "scalingnote_request_latency_seconds_bucket",
        "scalingnote_batch_size_bucket",
        "scalingnote_queue_depth",
        f'scalingnote_index_info{{version="{version}"}} 1.0',
        "scalingnote_index_docs 200.0",
    ):
        assert needle in text
    assert client.get("/docs").status_code == 200
    assert {"/search", "/search/batch", "/admin/reload"} <= set(client.get("/openapi.json").json()["paths"])
    _assert_error(client.get("/nope"), 404, "not_found")
    _assert_error(client.get("/search"), 405, "method_not_allowed")


def test_admin_needs_the_api_key(client: TestClient, tiny: Space) -> None:
    _assert_error(client.post("/admin/reload"), 401, "unauthorized")
    _assert_error(client.post("/admin/reload", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    r = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
    assert r.status_code == 200 and r.json()["changed"] is False
    body = _assert_error(client.post("/admin/rollback", headers={"X-API-Key": API_KEY}), 409, "conflict")
    assert "static index directory" in body["message"]
    _assert_error(client.post("/admin/reload", headers={"X-API-Key": API_KEY}, json={"v": 1}), 422, "invalid_request")
    with TestClient(create_app(_settings(tiny, api_key=None))) as no_key:
        _assert_error(no_key.post("/admin/reload", headers={"X-API-Key": API_KEY}), 403, "forbidden")


def test_a_request_that_waits_too_long_gets_503(tiny: Space) -> None:
    with TestClient(create_app(_settings(tiny, request_timeout_s=1e-6))) as c:
        _assert_error(c.post("/search", json={"query": "gene"}), 503, "unavailable")
        assert c.get("/healthz").status_code == 200
