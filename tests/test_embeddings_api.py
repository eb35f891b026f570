"""The embedding endpoints (issue #13): TEI's ``POST /embed``, OpenAI's ``POST /v1/embeddings`` and ``GET /info``,
in process and against a real server with the real ``openai`` client; bad inputs are 4xx, never 5xx."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from scalingnote.artifacts import read_index_manifest
from scalingnote.runtime.bundle import BundleEncoder
from scalingnote.service.app import create_app
from scalingnote.service.batcher import Overloaded
from scalingnote.service.engine import Engine
from scalingnote.service.settings import Settings
from tests.conftest import Server, Space, running_server

TEXTS = ["protein signal pathway", "insulin and diabetes risk", "sleep stress memory neuron"]
LONG = " ".join(["protein"] * 200)  # > the bundle's 64 tokens
MODEL = "model"  # the tiny bundle's name


def _settings(tiny: Space, **overrides: object) -> Settings:
    base: dict = {"bundle": tiny.bundle, "index_root": tiny.index, "max_body_bytes": 4096, "max_batch_queries": 4}
    return Settings(_env_file=None, **(base | overrides))  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def client(tiny: Space) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tiny)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def encoder(tiny: Space) -> BundleEncoder:
    return BundleEncoder(tiny.bundle, "fp32")


@pytest.fixture(scope="module")
def server(tiny: Space, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tiny.bundle, tiny.index, tmp_path_factory.mktemp("embed-server"), max_batch_queries=4) as s:
        yield s


def _cosines(got: object, want: np.ndarray) -> np.ndarray:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    return (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))


def _assert_error(r: httpx.Response, status: int, code: str, says: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and says in body["message"], body


def test_embed_returns_the_bundle_encoders_vectors(client: TestClient, encoder: BundleEncoder) -> None:
    want, _ = encoder.encode_with_flags(TEXTS)
    r = client.post("/embed", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    assert (_cosines(r.json(), want) >= 0.9999).all()
    assert np.allclose(np.linalg.norm(r.json(), axis=1), 1.0, atol=1e-5)
    one = client.post("/embed", json={"inputs": TEXTS[1], "normalize": True, "truncate": None, "dimensions": 32})
    assert one.status_code == 200 and len(one.json()) == 1, one.text
    assert _cosines(one.json(), want[1:2])[0] >= 0.9999


def test_a_text_over_max_tokens_is_422_unless_truncate(client: TestClient, encoder: BundleEncoder) -> None:
    for body in ({"inputs": [TEXTS[0], LONG]}, {"inputs": LONG, "truncate": False}):
        _assert_error(client.post("/embed", json=body), 422, "invalid_request", "longer than max_input_length (64")
    _assert_error(client.post("/v1/embeddings", json={"input": LONG, "model": MODEL}), 422, "invalid_request", "64")
    r = client.post("/embed", json={"inputs": [TEXTS[0], LONG], "truncate": True, "truncation_direction": "right"})
    assert r.status_code == 200, r.text
    want, truncated = encoder.encode_with_flags([TEXTS[0], LONG])
    assert truncated == [False, True] and (_cosines(r.json(), want) >= 0.9999).all()


OPTIONS = {
    "normalize false": ({"normalize": False}, "normalises inside its graph"),
    "prompt name": ({"prompt_name": "query"}, "no named prompts"),
    "left truncation": ({"truncation_direction": "Left", "truncate": True}, "only Right"),
    "fewer dimensions": ({"dimensions": 16}, "not trained for truncation"),
    "more dimensions": ({"dimensions": 64}, "only its full dimension 32"),
}


@pytest.mark.parametrize(("options", "says"), OPTIONS.values(), ids=OPTIONS.keys())
def test_embed_refuses_options_the_bundle_cannot_honour(client: TestClient, options: dict, says: str) -> None:
    _assert_error(client.post("/embed", json={"inputs": "gene"} | options), 422, "invalid_request", says)


MISSING = object()
BAD_TEXTS = {
    "missing": (MISSING, "Field required"),
    "empty text": ("", ""),
    "blank text": (" \t\n", "non-whitespace"),
    "empty list": ([], ""),
    "blank text in list": (["a", "  "], "non-whitespace"),
    "null": (None, ""),
    "number": (5, ""),
    "object": ({"text": "a"}, ""),
    "number in list": (["a", 5.5], ""),
    "token ids": ([101, 2023, 102], "token-id arrays are not supported"),
    "token id batch": ([[101, 102]], "token-id arrays are not supported"),
    "too many texts": (["a", "b", "c", "d", "e"], "at most 4 texts per request, got 5"),
}


@pytest.mark.parametrize(("texts", "says"), BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
def test_bad_texts_get_422_on_both_routes(client: TestClient, texts: object, says: str) -> None:
    tei, openai = ({} if texts is MISSING else {name: texts} for name in ("inputs", "input"))
    _assert_error(client.post("/embed", json=tei), 422, "invalid_request", says)
    _assert_error(client.post("/v1/embeddings", json={"model": MODEL} | openai), 422, "invalid_request", says)


BAD_EMBED = {
    "unknown field": ({"inputs": "a", "top_k": 3}, "top_k"),
    "normalize as string": ({"inputs": "a", "normalize": "true"}, "normalize"),
    "truncation direction": ({"inputs": "a", "truncation_direction": "Middle"}, "truncation_direction"),
    "zero dimensions": ({"inputs": "a", "dimensions": 0}, "dimensions"),
}


@pytest.mark.parametrize(("body", "says"), BAD_EMBED.values(), ids=BAD_EMBED.keys())
def test_bad_embed_bodies_get_422(client: TestClient, body: dict, says: str) -> None:
    _assert_error(client.post("/embed", json=body), 422, "invalid_request", says)


BAD_OPENAI = {
    "no model": ({"input": "a"}, "model: Field required"),
    "another model": ({"input": "a", "model": "text-embedding-3-small"}, "serves 'model'"),
    "encoding format": ({"input": "a", "model": MODEL, "encoding_format": "binary"}, "encoding_format"),
    "fewer dimensions": ({"input": "a", "model": MODEL, "dimensions": 8}, "not trained for truncation"),
    "TEI option": ({"input": "a", "model": MODEL, "truncate": True}, "truncate"),
    "zero dimensions": ({"input": "a", "model": MODEL, "dimensions": 0}, "dimensions"),
    "user as number": ({"input": "a", "model": MODEL, "user": 7}, "user"),
}


@pytest.mark.parametrize(("body", "says"), BAD_OPENAI.values(), ids=BAD_OPENAI.keys())
def test_bad_openai_bodies_get_422(client: TestClient, body: dict, says: str) -> None:
    _assert_error(client.post("/v1/embeddings", json=body), 422, "invalid_request", says)


def test_openai_shape_float_and_base64(client: TestClient, encoder: BundleEncoder) -> None:
    want, _ = encoder.encode_with_flags(TEXTS)
    tokens = sum(len(e.ids) for e in encoder.tokenize(TEXTS))
    bodies = {}
    for fmt in ("float", "base64"):
        body = {"input": TEXTS, "model": MODEL, "encoding_format": fmt, "dimensions": 32, "user": "u-1"}
        r = client.post("/v1/embeddings", json=body)
        assert r.status_code == 200, r.text
        bodies[fmt] = r.json()
        assert set(bodies[fmt]) == {"object", "data", "model", "usage"} and bodies[fmt]["object"] == "list"
        assert bodies[fmt]["model"] == MODEL and bodies[fmt]["usage"] == {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
        }
        assert [d["index"] for d in bodies[fmt]["data"]] == [0, 1, 2]
        assert {d["object"] for d in bodies[fmt]["data"]} == {"embedding"}
    floats = [d["embedding"] for d in bodies["float"]["data"]]
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in bodies["base64"]["data"]]
    assert (_cosines(floats, want) >= 0.9999).all()
    assert np.array_equal(np.asarray(decoded), want), "base64 is the exact float32 bytes"
    single = client.post("/v1/embeddings", json={"input": TEXTS[0], "model": MODEL}).json()
    assert len(single["data"]) == 1 and single["usage"]["prompt_tokens"] == len(encoder.tokenize(TEXTS[:1])[0].ids)


def test_info_describes_the_served_model(client: TestClient, tiny: Space) -> None:
    r = client.get("/info")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model_id": MODEL,
        "served_model_name": MODEL,
        "model_dtype": "float32",
        "model_type": {"embedding": {"pooling": "mean"}},
        "max_input_length": 64,
        "max_batch_requests": _settings(tiny).max_batch_size,
        "max_client_batch_size": 4,
        "auto_truncate": False,
        "version": r.json()["version"],
        "dim": 32,
        "normalized": True,
        "variant": "fp32",
        "index_version": read_index_manifest(tiny.index).version,
        "modes": ["dense"],
    }
    assert {"/embed", "/v1/embeddings", "/info"} <= set(client.get("/openapi.json").json()["paths"])


def test_embeddings_share_the_batchers_limits_and_metrics(
    client: TestClient, tiny: Space, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/embed", json={"inputs": "gene"})
    batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
    monkeypatch.setattr(batcher, "refusal", lambda n: Overloaded(3) if n > 1 else None)  # refused at enqueue
    for path, body in (("/embed", {"inputs": ["a", "b"]}), ("/v1/embeddings", {"input": ["a", "b"], "model": MODEL})):
        r = client.post(path, json=body)
        _assert_error(r, 429, "overloaded")
        assert r.headers["Retry-After"] == "3"
    monkeypatch.setattr(batcher, "refusal", lambda n: Overloaded(2))  # refused before the body is parsed
    _assert_error(client.post("/embed", json={"inputs": "a"}), 429, "overloaded")
    monkeypatch.undo()
    metrics = client.get("/metrics").text
    for needle in ('route="/embed",status="200"', 'route="/embed",status="429"', 'route="/v1/embeddings",status="429"'):
        assert needle in metrics
    _assert_error(client.post("/embed", json={"inputs": "x" * 5000}), 413, "body_too_large")
    with TestClient(create_app(_settings(tiny, request_timeout_s=1e-6))) as slow:
        _assert_error(slow.post("/embed", json={"inputs": "gene"}), 503, "unavailable")
        _assert_error(slow.post("/v1/embeddings", json={"input": "gene", "model": MODEL}), 503, "unavailable")


def test_a_bundle_that_does_not_normalise(tiny: Space, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.from_settings(_settings(tiny))
    monkeypatch.setattr(engine.encoder.manifest.encoder, "normalize", False)
    run = engine.encoder.run
    monkeypatch.setattr(engine.encoder, "run", lambda encodings: 3 * run(encodings))  # vectors of norm 3
    with TestClient(create_app(_settings(tiny), engine=engine)) as c:
        norms = {
            flag: np.linalg.norm(c.post("/embed", json={"inputs": TEXTS, "normalize": flag}).json(), axis=1)
            for flag in (True, False)
        }
        assert np.allclose(norms[True], 1.0, atol=1e-5) and np.allclose(norms[False], 3.0, atol=1e-4)
        data = c.post("/v1/embeddings", json={"input": TEXTS, "model": MODEL}).json()["data"]
        assert np.allclose(np.linalg.norm([d["embedding"] for d in data], axis=1), 1.0, atol=1e-5)
        assert c.get("/info").json()["normalized"] is False


def test_the_openai_client_gets_the_bundles_vectors(server: Server, encoder: BundleEncoder) -> None:
    from openai import APIStatusError, OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    want, _ = encoder.encode_with_flags(TEXTS)
    for fmt in ("float", None):  # None: the client's default, base64 decoded by the client
        kwargs = {"encoding_format": fmt} if fmt else {}
        got = client.embeddings.create(input=TEXTS, model=MODEL, **kwargs)
        assert got.model == MODEL and [d.index for d in got.data] == [0, 1, 2]
        assert (_cosines([d.embedding for d in got.data], want) >= 0.9999).all()
        tokens = sum(len(e.ids) for e in encoder.tokenize(TEXTS))
        assert got.usage.prompt_tokens == got.usage.total_tokens == tokens
    one = client.embeddings.create(input=TEXTS[2], model=MODEL, dimensions=32)
    assert _cosines([one.data[0].embedding], want[2:])[0] >= 0.9999
    for bad in ({"input": [[101, 102]], "model": MODEL}, {"input": "a", "model": "other"}):
        with pytest.raises(APIStatusError) as err:
            client.embeddings.create(**bad)
        assert err.value.status_code == 422
    r = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS}, timeout=10)
    assert r.status_code == 200 and (_cosines(r.json(), want) >= 0.9999).all()


def test_no_5xx_and_schema_conformance_on_the_embedding_routes(server: Server) -> None:
    """schemathesis over /embed, /v1/embeddings and /info (valid and invalid data): no 5xx, every answer as
    documented (status, content type, response schema)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings, strategies
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi import checks as oc

    checks = [
        not_a_server_error,
        oc.status_code_conformance,
        oc.content_type_conformance,
        oc.response_schema_conformance,
    ]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    part = schema.include(path_regex="^/(embed|v1/embeddings|info)$")
    assert len(list(part.get_all_operations())) == 3
    modes = [part.as_strategy(mode) for mode in schemathesis.GenerationMode]

    @given(case=strategies.one_of(modes))
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def fuzz(case) -> None:
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = MODEL  # a generated name is another model (422): reach the 200s too
        case.call_and_validate(checks=checks, timeout=30)

    fuzz()
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'status="5' not in metrics
    assert 'route="/embed",status="200"' in metrics and 'route="/v1/embeddings",status="200"' in metrics
