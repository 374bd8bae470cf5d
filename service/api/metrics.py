"""Prometheus metrics, on a registry per app (so several apps in one process never collide).

Request latency is labelled by route template, not raw path, and by method only among the
standard ones (any other is `other`: h11 accepts any token as a method), to keep the label set
bounded whatever clients send.
Queue depth is read from the database at scrape time, so it is right on every replica without
any bookkeeping in the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("service.api.metrics")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _QueueDepthCollector(Collector):
    def __init__(self, read_depths: Callable[[], dict[str, int]]) -> None:
        self._read_depths = read_depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "triage_queue_depth", "Open claims in the review queue, by lane.", labels=["lane"]
        )
        try:
            depths = self._read_depths()
        except Exception:  # a scrape must not fail because the database is briefly away
            logger.warning("queue depth unavailable", exc_info=True)
            depths = {}
        for lane in ("fast_track", "needs_review", "suspicious", "needs_more_evidence"):
            family.add_metric([lane], depths.get(lane, 0))
        yield family


class Metrics:
    def __init__(self, *, model_version: str, read_queue_depths: Callable[[], dict[str, int]]):
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "triage_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.photos_scored = Counter(
            "triage_photos_scored",
            "Photos assessed by the model (evidence uploads).",
            registry=self.registry,
        )
        self.photos_rejected = Counter(
            "triage_photos_rejected",
            "Uploaded files refused at intake, by reason code.",
            ["code"],
            registry=self.registry,
        )
        self.model_info = Info("triage_model", "The loaded scoring model.", registry=self.registry)
        self.model_info.info({"version": model_version})
        self.registry.register(_QueueDepthCollector(read_queue_depths))


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.request_latency.labels(method, template, str(status)).observe(
                perf_counter() - started
            )
