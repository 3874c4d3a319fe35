"""A small HTTP/1.1 server for the callback endpoint, built to face hostile clients (every sandbox is one).

One request per connection (`Connection: close`). What one source address may cost the controller is bounded:

- connections: at most `per_source` open at once (and `total` overall); more are closed at accept;
- requests: a token bucket per source (`rate`/s, burst `burst`); beyond it → 429;
- time: the request head must arrive within `head_timeout`, the body within `body_timeout` (no idle connections);
- size: a head larger than `max_head` → 431; a body only with Content-Length (chunked → 411) and never larger
  than `max_body` (→ 413) — both refused *before* a byte of the body is read, then the connection is closed;
- abuse: every refusal above is a strike; `strikes` of them within `strike_window` cut the source off for `cutoff`
  seconds (its open connections are closed, new ones closed at accept), with one logged reason.

The application sees a parsed request only after authorisation-relevant headers arrived and reads the body through
`Request.body()`, which enforces the limits while streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from hearth.ratelimit import TokenBucket

log = logging.getLogger("hearth.agentlink")


@dataclass(frozen=True)
class Limits:
    per_source: int = 8
    total: int = 512
    rate: float = 20.0  # requests per second per source, sustained
    burst: int = 40
    head_timeout: float = 5.0
    body_timeout: float = 10.0
    max_head: int = 16 * 1024
    max_body: int = 1 << 20
    strikes: int = 20
    strike_window: float = 10.0
    cutoff: float = 60.0


class HttpRefusal(Exception):
    """A request refused with `status` (and a JSON `{"error": reason}` body)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    source: str
    _read: Callable[[], Awaitable[bytes]]

    async def body(self) -> bytes:
        """The whole body (≤ max_body, within body_timeout); raises HttpRefusal otherwise."""
        return await self._read()


Response = tuple[int, dict[str, Any]]
App = Callable[[Request], Awaitable[Response]]


@dataclass
class _Source:
    bucket: TokenBucket
    conns: set[asyncio.Task[None]] = field(default_factory=set)
    strikes: list[float] = field(default_factory=list)
    cut_until: float = 0.0


class BoundedServer:
    def __init__(self, app: App, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self._sources: dict[str, _Source] = {}
        self._open = 0
        self._server: asyncio.Server | None = None
        self.refused: dict[str, int] = {}  # reason → count (for tests and metrics)

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=self.limits.max_head)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for src in list(self._sources.values()):
            for task in list(src.conns):
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def connections(self, source: str) -> int:
        src = self._sources.get(source)
        return len(src.conns) if src else 0

    def is_cut_off(self, source: str) -> bool:
        src = self._sources.get(source)
        return src is not None and src.cut_until > time.monotonic()

    # ---- per-source accounting -------------------------------------------------------------------
    def _strike(self, source: str, src: _Source, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        now = time.monotonic()
        src.strikes = [t for t in src.strikes if now - t < self.limits.strike_window]
        src.strikes.append(now)
        if len(src.strikes) >= self.limits.strikes and src.cut_until <= now:
            src.cut_until = now + self.limits.cutoff
            src.strikes.clear()
            log.warning(
                "sandbox cut off from the callback endpoint",
                extra={"source": source, "reason": reason, "seconds": self.limits.cutoff},
            )
            current = asyncio.current_task()
            for task in list(src.conns):
                if task is not current:
                    task.cancel()

    # ---- one connection --------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "?"
        src = self._sources.get(source)
        if src is None:
            src = self._sources[source] = _Source(TokenBucket(self.limits.rate, self.limits.burst, time.monotonic()))
        task = asyncio.current_task()
        assert task is not None
        try:
            if src.cut_until > time.monotonic():
                self.refused["cut_off"] = self.refused.get("cut_off", 0) + 1
                return
            if len(src.conns) >= self.limits.per_source:
                self._strike(source, src, "too_many_connections")
                return
            if self._open >= self.limits.total:  # not this source's fault: no strike
                self.refused["server_full"] = self.refused.get("server_full", 0) + 1
                return
            src.conns.add(task)
            self._open += 1
            try:
                await self._serve(reader, writer, source, src)
            finally:
                src.conns.discard(task)
                self._open -= 1
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
            now = time.monotonic()
            src.strikes = [t for t in src.strikes if now - t < self.limits.strike_window]
            full = src.bucket.tokens + (now - src.bucket.stamp) * src.bucket.rate >= src.bucket.burst
            if not src.conns and not src.strikes and src.cut_until <= now and full:
                self._sources.pop(source, None)  # nothing to remember: forgetting it gives nothing away

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str, src: _Source
    ) -> None:
        lim = self.limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=lim.max_head)

        async def respond(status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
            headers.append(("connection", "close"))
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=payload)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.drain(), 5)

        async def next_event(deadline: float) -> Any:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    code = exc.error_status_hint
                    raise HttpRefusal(431 if code == 431 else 400, f"bad request: {exc}") from None
                if event is not h11.NEED_DATA:
                    return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(reader.read(65536), remaining)
                conn.receive_data(data)

        try:
            try:
                event = await next_event(time.monotonic() + lim.head_timeout)
            except TimeoutError:
                self._strike(source, src, "head_timeout")
                return
            if not isinstance(event, h11.Request):
                return  # the client closed without a request
            head_size = len(event.method) + len(event.target) + 12 + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if head_size > lim.max_head:  # it arrived in one read, so h11's own limit did not apply
                raise HttpRefusal(431, f"request head larger than {lim.max_head} bytes")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            if src.bucket.take(time.monotonic()):
                raise HttpRefusal(429, "too many requests from this sandbox; slow down")
            if "transfer-encoding" in headers:
                raise HttpRefusal(411, "chunked bodies are refused; send Content-Length")
            length = int(headers.get("content-length", "0") or 0)  # h11 validated it
            if length > lim.max_body:
                raise HttpRefusal(413, f"body of {length} bytes exceeds {lim.max_body}")

            async def read_body() -> bytes:
                chunks: list[bytes] = []
                deadline = time.monotonic() + lim.body_timeout
                try:
                    while True:
                        ev = await next_event(deadline)
                        if isinstance(ev, h11.Data):
                            chunks.append(bytes(ev.data))
                        elif isinstance(ev, h11.EndOfMessage):
                            return b"".join(chunks)
                        else:
                            raise HttpRefusal(400, "incomplete body")
                except TimeoutError:
                    raise HttpRefusal(408, f"body not received within {lim.body_timeout:.0f}s") from None

            request = Request(event.method.decode(), event.target.decode("latin-1"), headers, source, read_body)
            status, body = await self.app(request)
            await respond(status, body)
        except HttpRefusal as refusal:
            if refusal.status in (400, 401, 408, 411, 413, 429, 431):
                self._strike(source, src, f"http_{refusal.status}")
            with contextlib.suppress(h11.LocalProtocolError):
                await respond(refusal.status, {"error": refusal.reason})
            await _linger(reader, writer)


LINGER_BYTES, LINGER_SECONDS = 256 * 1024, 1.0


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After a refusal: half-close, then read and discard a little of what the client is still sending, so closing
    does not reset the connection before the client has read the answer (a client whose 413 is lost in a reset
    retries). Bounded in bytes and time; nothing is kept."""
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
    deadline = time.monotonic() + LINGER_SECONDS
    left = LINGER_BYTES
    with contextlib.suppress(OSError, TimeoutError):
        while left > 0 and (remaining := deadline - time.monotonic()) > 0:
            data = await asyncio.wait_for(reader.read(min(left, 65536)), remaining)
            if not data:
                break
            left -= len(data)


async def serve(sock: socket.socket, app: App, limits: Limits) -> BoundedServer:
    server = BoundedServer(app, limits)
    await server.start(sock)
    return server
