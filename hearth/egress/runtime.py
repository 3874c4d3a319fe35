"""The egress of one controller: the gate's table and counters, the DNS forwarder, and their /metrics.

Started after the fabric is up (`start`), stopped on shutdown (`stop`): the forwarder's sockets closed, the counter
refresh ended. Grants come from the sandbox manager (hearth/lifecycle/manager.py) as sandboxes start and end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from hearth.config import Settings
from hearth.egress.dns import DnsForwarder
from hearth.egress.gate import EgressGate

log = logging.getLogger("hearth.egress")


class EgressCollector(Collector):
    """hearth_egress_drops_total{sandbox, reason} for live sandboxes, hearth_egress_drops_all_total{reason}: all."""

    def __init__(self, gate: EgressGate) -> None:
        self.gate = gate

    def collect(self) -> Iterable[CounterMetricFamily]:
        d = self.gate.drops()
        live = CounterMetricFamily(
            "hearth_egress_drops",
            "Packets (DNS: queries) of a live sandbox refused on the way out, by reason",
            labels=["sandbox", "reason"],
        )
        for owner, reasons in sorted(d.live.items()):
            for reason, n in sorted(reasons.items()):
                live.add_metric([owner, reason], n)
        yield live
        total = CounterMetricFamily(
            "hearth_egress_drops_all", "Everything refused on the way out since start, by reason", labels=["reason"]
        )
        for reason, n in sorted(d.totals.items()):
            total.add_metric([reason], n)
        yield total


class EgressRuntime:
    def __init__(self, settings: Settings, gate: EgressGate, *, dns: DnsForwarder | None = None) -> None:
        self.s = settings
        self.gate = gate
        self.dns = dns or DnsForwarder(settings, gate)
        self.started = False

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(EgressCollector(self.gate))

    async def start(self) -> None:
        await self.gate.up()
        if not self.gate.on:
            return
        await self.dns.start()
        self.gate.start()
        self.started = True

    async def stop(self) -> None:
        await self.dns.stop()
        await self.gate.stop()
        self.started = False
