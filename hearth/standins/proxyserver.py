"""A small upstream forward proxy standing in for the corporate / residential one behind HEARTH_EGRESS_PROXY: HTTP
CONNECT and plain absolute-URI HTTP, Basic authentication required, listening on several ports at once and recording
which port and which user every request came in on (the proof of "one address per person"). For tests, the internet
stand-in and `hearth providers check --e2e`; not for production traffic.

    python -m hearth.standins.proxyserver --listen 0.0.0.0 --ports 10001-10004 --user USER:PASS --record seen.jsonl

(run it inside a network namespace with `ip netns exec`; the password is read from --user or $PROXY_USER, never
logged). Every read and connect has a timeout; connections are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("hearth.proxyserver")
HEAD_MAX = 16 * 1024
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
MAX_CONNECTIONS = 512


@dataclass(frozen=True)
class Seen:
    """One request the proxy answered."""

    port: int  # the proxy port it came in on (the user's port)
    user: str  # the Basic user name it carried ("" none, "?" malformed)
    method: str  # CONNECT, GET, …
    target: str  # host:port
    status: int  # what the proxy answered (200, 407, 502, …)
    peer: str  # the client's address


@dataclass
class ProxyServer:
    host: str = "127.0.0.1"
    ports: tuple[int, ...] = (0,)  # 0: any free port
    users: Mapping[str, str] = field(default_factory=dict, repr=False)  # user → password; empty: no auth asked
    resolve: Mapping[str, str] = field(default_factory=dict)  # host name → address (a stand-in's DNS), else DNS
    refuse_all: bool = False  # answer 407 to everyone (credentials rotated upstream)
    record: Path | None = None  # append each Seen as a JSON line
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._servers: list[asyncio.Server] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()
        self.bound: list[int] = []

    async def start(self) -> list[int]:
        for port in self.ports:
            srv = await asyncio.start_server(self._client, self.host, port, reuse_address=True)
            self._servers.append(srv)
            self.bound.append(int(srv.sockets[0].getsockname()[1]))
        return self.bound

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # let each close its transports before the loop goes away
            await asyncio.wait(tasks, timeout=5)
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 5)

    def users_by_port(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for s in self.seen:
            out.setdefault(s.port, set()).add(s.user)
        return out

    def _note(self, seen: Seen) -> None:
        self.seen.append(seen)
        if self.record is not None:
            with self.record.open("a") as f:
                f.write(json.dumps(asdict(seen)) + "\n")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        local = writer.get_extra_info("sockname")
        port = int(local[1]) if local else 0
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            async with self._slots:
                await self._serve(reader, writer, port, peer_s)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        except asyncio.CancelledError:  # stop(): the connection ends here, quietly
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, peer: str) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        if len(head) > HEAD_MAX:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        uri = rest.rpartition(" ")[0]
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        user = self._user(headers.get("proxy-authorization", ""))
        parts = urlsplit(uri)
        if method == "CONNECT":
            target = uri
        else:
            target = f"{parts.hostname}:{parts.port or 80}" if parts.scheme == "http" and parts.hostname else ""
        if self.users and (self.refuse_all or user is None):
            self._note(Seen(port, user or "", method, target, 407, peer))
            writer.write(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="hearth-test"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        host, _, tport = target.rpartition(":")
        if not host or not tport.isdigit():
            self._note(Seen(port, user or "", method, target, 400, peer))
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        addr = self.resolve.get(host.strip("[]"), host.strip("[]"))
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(addr, int(tport)), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            self._note(Seen(port, user or "", method, target, 502, peer))
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self._note(Seen(port, user or "", method, target, 200, peer))
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:  # forward the request without the proxy's own header
                kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith("proxy-")]
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                first = f"{method} {path} {lines[0].rpartition(' ')[2]}"
                up_w.write(("\r\n".join([first, *kept]) + "\r\n\r\n").encode("latin-1"))
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        finally:
            up_w.close()

    def _user(self, header: str) -> str | None:
        """The user of a valid Basic header; None when missing or wrong."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if self.users.get(user) == password else None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await asyncio.wait_for(src.read(65536), IDLE_TIMEOUT)
            if not data:
                break
            dst.write(data)
            await asyncio.wait_for(dst.drain(), IDLE_TIMEOUT)
    except (OSError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()


class ProxyThread:
    """A ProxyServer on a loop of its own thread (for synchronous tests): `with ProxyThread(server) as ports:`."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="proxyserver", daemon=True)

    def __enter__(self) -> list[int]:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def port_list(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(out)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hearth.standins.proxyserver")
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--ports", default="10001-10004")
    ap.add_argument("--user", default=os.environ.get("PROXY_USER", ""), help="USER:PASS (or $PROXY_USER)")
    ap.add_argument("--record", type=Path, default=None)
    ap.add_argument("--resolve", action="append", default=[], help="NAME=ADDRESS (repeatable)")
    ap.add_argument("--refuse-all", action="store_true")
    args = ap.parse_args(list(argv) if argv is not None else None)
    user, _, password = args.user.partition(":")
    resolve = dict(r.split("=", 1) for r in args.resolve)
    server = ProxyServer(
        args.listen, port_list(args.ports), {user: password} if user else {}, resolve, args.refuse_all, args.record
    )

    async def run() -> None:
        ports = await server.start()
        print(json.dumps({"listening": ports, "ts": time.time()}), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
