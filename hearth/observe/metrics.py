"""Prometheus metrics. One registry per controller (no process-global state), exposed at `/metrics`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_BOOT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 90, 150)


class _StateCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]], pool: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts
        self._pool = pool

    def collect(self) -> Iterable[GaugeMetricFamily]:
        by_state = GaugeMetricFamily("hearth_sessions", "Sessions by state", labels=["state"])
        for state, n in sorted(self._counts().items()):
            by_state.add_metric([state], n)
        yield by_state
        used, size = self._pool()
        yield GaugeMetricFamily("hearth_lease_pool_used", "Leased sandbox addresses", value=used)
        yield GaugeMetricFamily("hearth_lease_pool_size", "Addresses in the IP pool", value=size)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.create_to_ready = Histogram(
            "hearth_session_create_to_ready_seconds", "Session creation to ready", buckets=_BOOT_BUCKETS, registry=r
        )
        self.create_to_first_frame = Histogram(
            "hearth_session_create_to_first_frame_seconds",
            "Session creation to the first framebuffer update relayed to a viewer",
            buckets=_BOOT_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "hearth_boot_stage_seconds",
            "Seconds since creation at which each boot stage completed",
            ["stage"],
            buckets=_BOOT_BUCKETS,
            registry=r,
        )
        self.pool_handouts = Counter(
            "hearth_pool_handouts",
            "Session starts served by the warm pool (hit) or booted cold (miss)",
            ["result"],
            registry=r,
        )
        self.pool_size = Gauge("hearth_pool_size", "Warm-pool sandboxes ready to hand out", ["mode"], registry=r)
        self.failures = Counter("hearth_session_failures", "Failed sessions by hop", ["hop"], registry=r)
        self.gateway_bytes = Counter("hearth_gateway_bytes", "Bytes relayed by the gateway", ["direction"], registry=r)
        self.gateway_connections = Gauge("hearth_gateway_connections", "Open viewer connections", registry=r)
        self.gateway_closes = Counter(
            "hearth_gateway_closes", "Viewer connections closed, by code", ["code"], registry=r
        )
        self.webhook_attempts = Counter(  # hearth/webhooks/sender.py
            "hearth_webhook_attempts",
            "Webhook POSTs by result: delivered (2xx), refused (another status), unreachable (no answer), given_up",
            ["result"],
            registry=r,
        )
        self.reconciler_actions = Counter(
            "hearth_reconciler_actions",
            "Orphans reclaimed and sessions failed by the reconciler",
            ["action"],
            registry=r,
        )
        self.doctor_failures = Counter(
            "hearth_doctor_failures", "Diagnoses whose first failure was at this hop", ["hop"], registry=r
        )

    def track_state(self, counts: Callable[[], dict[str, int]], pool: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_StateCollector(counts, pool))

    def render(self) -> bytes:
        return generate_latest(self.registry)
