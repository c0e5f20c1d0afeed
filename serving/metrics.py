"""Prometheus metrics of the service (one registry; multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "BATCH_SIZE",
    "CONTENT_TYPE_LATEST",
    "DEGRADED",
    "MODEL_INFO",
    "RELOADS",
    "REQUESTS",
    "REQUEST_SECONDS",
    "STORE_UP",
    "UNKNOWN_IDS",
    "render",
]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("recsys_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "recsys_request_seconds", "HTTP request latency by route", ["route"], buckets=_LATENCY_BUCKETS
)
DEGRADED = Counter("recsys_degraded_total", "answers given without the history store", ["reason"])
BATCH_SIZE = Histogram(
    "recsys_batch_size", "requests per tower call and search", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
UNKNOWN_IDS = Counter("recsys_unknown_ids_total", "video ids in requests that the model does not know", ["where"])
RELOADS = Counter("recsys_reloads_total", "bundle reload attempts by outcome", ["result"])
MODEL_INFO = Gauge(
    "recsys_model_info", "1 for the model version being served", ["model_version"], multiprocess_mode="liveall"
)
STORE_UP = Gauge("recsys_store_up", "1 when the history store answered its last call", multiprocess_mode="liveall")


def render() -> bytes:
    """The exposition text: this process's metrics, or every worker's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
