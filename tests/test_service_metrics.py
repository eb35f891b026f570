"""Prometheus conventions of /metrics: names, units, ``_total`` counters and the build identity."""

from __future__ import annotations

import importlib.metadata

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from scalingnote.artifacts import read_bundle_manifest
from scalingnote.service.app import create_app
from scalingnote.service.metrics import Metrics
from scalingnote.service.settings import Settings
from tests.conftest import Space

UNITLESS_HISTOGRAMS = {"scalingnote_batch_size"}  # a count of queries; every other histogram is a time


def test_exposition_follows_prometheus_naming() -> None:
    metrics = Metrics()
    metrics.requests.labels(route="/search", status="200").inc()
    metrics.rejected.inc()
    metrics.reloads.labels(result="ok").inc()
    metrics.set_build("b", "fp32")
    metrics.set_index("v1", 3)
    families = list(text_string_to_metric_families(metrics.render().decode()))
    assert families and all(f.name.startswith("scalingnote_") and f.name.islower() for f in families)
    for family in families:
        if family.type == "counter":
            assert all(s.name == f"{family.name}_total" for s in family.samples), family
        if family.type == "histogram" and family.name not in UNITLESS_HISTOGRAMS:
            assert family.name.endswith("_seconds"), family.name
        if family.name.endswith("_info"):
            assert family.type == "gauge" and [s.value for s in family.samples] == [1.0], family


def test_build_info_names_bundle_variant_and_version(tiny: Space) -> None:
    settings = Settings(_env_file=None, bundle=tiny.bundle, index_root=tiny.index, variant="fp32")  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        text = client.get("/metrics").text
    (info,) = (f for f in text_string_to_metric_families(text) if f.name == "scalingnote_build_info")
    expected = {
        "bundle": read_bundle_manifest(tiny.bundle).name,
        "variant": "fp32",
        "version": importlib.metadata.version("scalingnote"),
    }
    assert [(s.labels, s.value) for s in info.samples] == [(expected, 1.0)]
