"""The DNS forwarder's cost: resolve p50 from a sandbox (through the forwarder on the fabric's bridge address) vs
from the host (resolving against the upstream — the internet stand-in's DNS — directly), in the same run (ratio).

A real controller attached to the internet stand-in (hearth/standins/internet.py: the fabric's uplink leads into
it, HEARTH_DNS_UPSTREAM is its DNS); one sign-in sandbox (example provider, direct mode: no desktop) is started and
left waiting; then N A queries of the providers' names alternately:
- sandbox: a UDP socket in the sandbox's network namespace → BRIDGE_IP:53 (the resolver its resolv.conf names);
- host: a UDP socket in the host's side of the stand-in (HEARTH_UPLINK_NETNS, where the host's own resolver
  traffic goes out) → the stand-in's DNS.
The same stdlib query code on both sides (hearth/standins/inetdns.resolve); the first query of each name (cold)
reported apart from the p50 / p90 of the rest.

    sudo .venv/bin/python bench/dns_forwarder.py -n 500

Everything (stand-in `hearth-bdi<hex>-…`, fabric `hearth-bd<hex>`, data dir) is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from collections.abc import Callable

import httpx

from hearth.fabric.dial import socket_in_netns
from hearth.reconcile.inventory import scan_sync
from hearth.serving.local import local_controller, scratch_settings
from hearth.standins.e2e import settings_env
from hearth.standins.inetdns import resolve
from hearth.standins.internet import DNS_IP, internet

NAMES = ("platform.claude.com", "auth.openai.com", "oauth2.googleapis.com", "idp.example.com")


def timed(sock: socket.socket, server: str, names: tuple[str, ...], n: int) -> tuple[list[float], list[float]]:
    """(cold: the first query of each name, warm: the rest) in milliseconds; every answer must be an address."""
    cold: list[float] = []
    warm: list[float] = []
    for i in range(n):
        name = names[i % len(names)]
        t0 = time.perf_counter()
        try:
            addr = resolve(sock, server, name)
        except TimeoutError:
            raise SystemExit(f"{name}: no answer from {server} within 3 s") from None
        ms = (time.perf_counter() - t0) * 1000
        if addr is None:
            raise SystemExit(f"{name}: no address from {server}")
        (cold if i < len(names) else warm).append(ms)
    return cold, warm


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def one_side(label: str, make: Callable[[], socket.socket], server: str, n: int) -> float:
    sock = make()
    try:
        cold, warm = timed(sock, server, NAMES, n)
    finally:
        sock.close()
    p50, p90 = statistics.median(warm), pct(warm, 90)
    print(f"{label:<34} cold {statistics.median(cold):7.3f} ms   p50 {p50:7.3f} ms   p90 {p90:7.3f} ms   ({len(warm)})")
    return p50


async def sandbox_netns(http: httpx.AsyncClient, fabric_settings: object, timeout: float = 120) -> tuple[str, str]:
    """Start one direct-mode sign-in sandbox; (session id, its network namespace) once it is ready."""
    r = await http.post("/api/auth/start", json={"user_id": "bench-dns", "provider": "example", "mode": "direct"})
    r.raise_for_status()
    sid = r.json()["session_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = (await http.get(f"/api/auth/session/{sid}")).json()
        if body["status"] in ("failed", "cancelled", "expired", "completed"):
            raise SystemExit(f"the sandbox ended {body['status']}: {body.get('reason')}")
        if body["status"] not in ("queued", "starting"):
            inv = await asyncio.to_thread(scan_sync, fabric_settings)  # type: ignore[arg-type]
            if len(inv.netns) == 1:
                return sid, next(iter(inv.netns.values()))
        await asyncio.sleep(0.1)
    raise SystemExit("the sandbox did not start")


async def main(n: int) -> int:
    with internet("hearth-bdi") as inet, scratch_settings(settings_env(inet), "hearth-bd") as settings:
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=30) as http,
        ):
            sid, ns = await sandbox_netns(http, settings)
            forwarder = str(settings.bridge_ip)  # the forwarder every sandbox's resolv.conf names (hearth/egress)
            print(f"sandbox {ns}: forwarder {forwarder}:53; upstream (the stand-in's DNS) {DNS_IP}")
            udp = socket.SOCK_DGRAM
            # (in a thread: the forwarder runs on this process's event loop, in the controller)
            box = await asyncio.to_thread(
                one_side,
                "sandbox → forwarder → upstream",
                lambda: socket_in_netns(ns, socket.AF_INET, udp),
                forwarder,
                n,
            )
            host = await asyncio.to_thread(
                one_side, "host → upstream", lambda: socket_in_netns(inet.uplink_netns, socket.AF_INET, udp), DNS_IP, n
            )
            print(f"ratio sandbox / host p50: {box / host:.2f}  (the forwarder adds {box - host:+.3f} ms)")
            await http.post(f"/api/auth/session/{sid}/cancel")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="queries per side")
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.n)))
