"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

import scalingnote

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGE_BUCKETS = (2.5e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
                 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)  # fmt: skip
STAGES = ("parse", "queue", "tokenize", "encode", "search", "serialize")


class Metrics:
    """Request counts by route and status, latency and batch histograms, queue depth, build and index identity."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the scrape for nothing here
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "scalingnote_requests", "HTTP requests by route and status code.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "scalingnote_request_latency_seconds",
            "HTTP request latency (server side, first byte in to last byte out).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "scalingnote_batch_size", "Queries per ONNX + FAISS call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "scalingnote_batch_seconds", "Encode + search time of one batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "scalingnote_stage_seconds",
            "Where a /search goes: parse and serialize per request (fast path), queue per request (enqueued to "
            "its batch starting), tokenize, encode and search per batch.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.stages = {name: self.stage.labels(stage=name) for name in STAGES}
        self.queue_depth = Gauge("scalingnote_queue_depth", "Queries waiting for a batch.", registry=r)
        self.rejected = Counter(
            "scalingnote_rejected", "Requests refused with 429 (queue full or over its wait budget).", registry=r
        )
        self.query_seconds = Gauge(
            "scalingnote_query_seconds", "Measured inference time per query (EWMA; admission uses it).", registry=r
        )
        self.build_info = Gauge(
            "scalingnote_build_info",
            "What this process serves (value 1): bundle name, its ONNX variant, package version.",
            ["bundle", "variant", "version"],
            registry=r,
        )
        self.index_info = Gauge(
            "scalingnote_index_info", "The index version being served (value 1).", ["version"], registry=r
        )
        self.index_docs = Gauge("scalingnote_index_docs", "Documents in the served index.", registry=r)
        self.process = Gauge(
            "scalingnote_process_info",
            "The server process that answered this scrape (value 1): with several workers each scrape is one "
            "worker's, and the pid tells them apart.",
            ["pid"],
            registry=r,
        )
        self.process.labels(pid=str(os.getpid())).set(1)
        self.reloads = Counter(
            "scalingnote_index_reloads", "Index reload attempts by result (ok, rejected).", ["result"], registry=r
        )

    def set_build(self, bundle: str, variant: str) -> None:
        self.build_info.clear()
        self.build_info.labels(bundle=bundle, variant=variant, version=scalingnote.__version__).set(1)

    def set_index(self, version: str, docs: int) -> None:
        self.index_info.clear()
        self.index_info.labels(version=version).set(1)
        self.index_docs.set(docs)

    def render(self) -> bytes:
        return generate_latest(self.registry)
