"""What the sandbox's local chaining proxy costs: an HTTPS request (new connection, CONNECT, TLS handshake, one GET)
through the local proxy → the upstream proxy (Basic auth) → a TLS server, against the same request straight to the
upstream proxy with the credentials (what a client holding the password would do). Both proxies and the server run
on loopback in this process's event loop (hearth_agent/egressproxy.py, hearth/standins/proxyserver.py); the client
is Python's ssl over asyncio streams. Prints p50/p90 of each and the ratio; also a bulk transfer's throughput.

    .venv/bin/python bench/egress_proxy.py [-n 300] [--mib 32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from hearth.standins.proxyserver import ProxyServer
from hearth.standins.standin import _certs
from hearth_agent.egressproxy import LocalProxy, Upstream

HOST = "provider.test"
AUTH = "Basic " + base64.b64encode(b"alice:pw").decode()


async def serve_tls(ctx: ssl.SSLContext, payload: bytes) -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            body = payload if b"GET /bulk" in head else b"ok\n"
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


async def fetch(proxy_port: int, auth: str, port: int, client: ssl.SSLContext, path: str = "/") -> int:
    r, w = await asyncio.open_connection("127.0.0.1", proxy_port)
    extra = f"Proxy-Authorization: {auth}\r\n" if auth else ""
    w.write(f"CONNECT {HOST}:{port} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{extra}\r\n".encode())
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    await w.start_tls(client, server_hostname=HOST)
    w.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    data = await r.read(-1)
    w.close()
    return len(data)


async def main(n: int, mib: int) -> None:
    ca, leaf, key = _certs((HOST,))
    with tempfile.TemporaryDirectory(prefix="hearth-bench-proxy-") as tmp:  # read once by the contexts, then removed
        d = Path(tmp)
        for name, data in (("ca.pem", ca), ("leaf.pem", leaf), ("key.pem", key)):
            (d / name).write_bytes(data)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(d / "leaf.pem", d / "key.pem")
        client = ssl.create_default_context(cafile=str(d / "ca.pem"))
    tls = await serve_tls(server_ctx, b"x" * (mib << 20))
    port = tls.sockets[0].getsockname()[1]
    upstream = ProxyServer("127.0.0.1", (0,), {"alice": "pw"}, resolve={HOST: "127.0.0.1"})
    up_port = (await upstream.start())[0]
    local = LocalProxy(Upstream("127.0.0.1", up_port, AUTH))
    local_port = await local.start()
    paths = {"direct to the upstream proxy": (up_port, AUTH), "through the local proxy": (local_port, "")}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(3):  # warm up
        for p, a in paths.values():
            await fetch(p, a, port, client)
    for _ in range(n):  # interleaved: both see the same machine load
        for name, (p, a) in paths.items():
            t0 = time.perf_counter()
            await fetch(p, a, port, client)
            times[name].append(time.perf_counter() - t0)
    bulk: dict[str, float] = {}
    for name, (p, a) in paths.items():
        t0 = time.perf_counter()
        got = await fetch(p, a, port, client, "/bulk")
        bulk[name] = got / (time.perf_counter() - t0) / (1 << 20)
    print(f"HTTPS request (connect, CONNECT, TLS, GET), n={n} each:")
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        print(
            f"  {name:30s} p50 {statistics.median(ts) * 1000:6.2f} ms  p90 {q[8] * 1000:6.2f} ms  {bulk[name]:7.1f} MiB/s"
        )
    direct, chained = (statistics.median(times[k]) for k in paths)
    print(f"ratio local/direct p50: {chained / direct:.2f}x; bulk throughput ratio: "
          f"{bulk['through the local proxy'] / bulk['direct to the upstream proxy']:.2f}x")  # fmt: skip
    await local.stop()
    await upstream.stop()
    tls.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--mib", type=int, default=32)
    args = ap.parse_args()
    asyncio.run(main(args.n, args.mib))
