"""A webhook receiver for the tests: a real HTTP/1.1 server on loopback (asyncio streams, one request per connection)
that verifies every Standard Webhooks signature, can be down (not listening), answer an error status or hang, and
records what it acknowledged — and how many requests of one stream were ever in flight at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from hearth.webhooks.signer import VerificationError, verify


@dataclass(frozen=True)
class Got:
    msg_id: str
    type: str
    stream: str
    data: dict[str, Any]


def stream_of(event: dict[str, Any]) -> str:
    data = event["data"]
    return str(data.get("session_id") or f"user:{data['user_id']}")


@dataclass
class Receiver:
    secret: str
    port: int
    status: int = 200  # the answer to a valid request
    retry_after: str | None = None
    hang: bool = False  # never answer (the sender's timeout ends the attempt)
    refuse: set[str] = field(default_factory=set)  # webhook ids answered with 503 whatever `status` says
    acked: list[Got] = field(default_factory=list)  # in the order acknowledged (duplicates kept)
    requests: int = 0
    bad_signatures: int = 0
    max_in_flight_per_stream: int = 0
    _in_flight: dict[str, int] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/hearth?tenant=t1"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def by_stream(self) -> dict[str, list[str]]:
        """Each stream's acknowledged ids, first acknowledgement only, in order."""
        out: dict[str, list[str]] = {}
        for got in self.acked:
            ids = out.setdefault(got.stream, [])
            if got.msg_id not in ids:
                ids.append(got.msg_id)
        return out

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
        self.requests += 1
        try:
            verify(self.secret, headers, body)
        except VerificationError:
            self.bad_signatures += 1
            await _answer(writer, 401)
            return
        event = json.loads(body)
        stream = stream_of(event)
        self._in_flight[stream] = self._in_flight.get(stream, 0) + 1
        self.max_in_flight_per_stream = max(self.max_in_flight_per_stream, self._in_flight[stream])
        try:
            await asyncio.sleep(0.01)  # a request of the same stream sent meanwhile would overlap this one
            if self.hang:
                await asyncio.sleep(3600)
            status = 503 if headers["webhook-id"] in self.refuse else self.status
            if 200 <= status < 300:
                self.acked.append(Got(headers["webhook-id"], event["type"], stream, event["data"]))
            await _answer(writer, status, self.retry_after)
        finally:
            self._in_flight[stream] -= 1


async def _answer(writer: asyncio.StreamWriter, status: int, retry_after: str | None = None) -> None:
    extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n".encode())
    await writer.drain()
