"""The callback endpoint against hostile clients, on real loopback sockets: the real BoundedServer and CallbackApp,
with a recording CallbackHandler standing in for the session service (the live flow is in tests/session and
tests/hostile). Sources are distinguished by loopback address (127.0.0.1 = the abuser, 127.0.0.2 = a neighbour).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from hearth.agentlink.httpd import BoundedServer, Limits
from hearth.signin.callbacks import MAX_EVENTS, CallbackApp
from hearth.signin.prompts import SigninPrompt
from hearth.vault.store import CredentialFile

SECRET = "s3cret-agent-key"
ABUSER, NEIGHBOUR = "127.0.0.1", "127.0.0.2"


@dataclass
class Recorder:
    events: list[tuple[str, str, str]] = field(default_factory=list)
    pushes: list[tuple[str, str, list[CredentialFile]]] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)
    prompts: list[tuple[str, SigninPrompt]] = field(default_factory=list)

    def adopting(self) -> bool:
        return False

    def secret_for(self, session_id: str) -> str | None:
        return SECRET if session_id.startswith("s") else None

    async def on_event(self, session_id: str, event: str, detail: str) -> str | None:
        self.events.append((session_id, event, detail))
        return None

    async def on_credentials(self, session_id: str, provider: str, files: list[CredentialFile]) -> str | None:
        if session_id in self.ended:
            return "session is completed: credentials are not expected"
        self.pushes.append((session_id, provider, files))
        return None

    async def on_signin(self, session_id: str, prompt: SigninPrompt) -> None:
        self.prompts.append((session_id, prompt))


@contextlib.asynccontextmanager
async def callback_server(limits: Limits) -> AsyncIterator[tuple[int, BoundedServer, Recorder]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # clients connect from 127.0.0.x (distinct sources on loopback)
    sock.listen(512)
    sock.setblocking(False)
    recorder = Recorder()
    server = BoundedServer(CallbackApp(recorder), limits)
    await server.start(sock)
    try:
        yield sock.getsockname()[1], server, recorder
    finally:
        await server.close()


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def post(
    port: int, source: str, path: str, body: bytes, secret: str = SECRET, extra: str = ""
) -> tuple[int, dict[str, object]]:
    reader, writer = await connect(port, source)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: cb\r\nAuthorization: Bearer {secret}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1])
    return status, json.loads(raw.split(b"\r\n\r\n", 1)[1])


def credentials_body() -> bytes:
    data = base64.b64encode(b'{"token": "x"}').decode()
    return json.dumps({"provider": "example", "files": [{"target": ".c.json", "mode": 384, "data_b64": data}]}).encode()


async def test_idle_connections_from_one_sandbox_neither_starve_others_nor_stay() -> None:
    limits = Limits(per_source=8, head_timeout=1.0, strikes=1000)
    async with callback_server(limits) as (port, server, recorder):
        idle = [await connect(port, ABUSER) for _ in range(250)]
        held = [w for r, w in idle if not r.at_eof()]
        # The neighbour's push is served while the abuser holds everything it may.
        status, body = await post(port, NEIGHBOUR, "/agent/v1/sessions/s2/credentials", credentials_body())
        assert (status, body) == (200, {"ok": True})
        assert recorder.pushes and recorder.pushes[0][0] == "s2"
        assert server.connections(ABUSER) <= limits.per_source
        assert server.refused["too_many_connections"] >= 250 - limits.per_source
        # Idle connections are closed once the head timeout passes: every one of them reads EOF.
        for reader, _ in idle:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        assert server.connections(ABUSER) == 0
        assert server.refused["head_timeout"] >= 1
        for w in held:
            w.close()


async def test_chunked_and_oversized_bodies_are_refused_before_they_are_read() -> None:
    async with callback_server(Limits(strikes=1000)) as (port, server, recorder):
        # Chunked: 411 right after the head; sending 400 MiB fails long before the end (the server closed).
        reader, writer = await connect(port, ABUSER)
        writer.write(
            b"POST /agent/v1/sessions/s1/credentials HTTP/1.1\r\nHost: cb\r\n"
            b"Authorization: Bearer " + SECRET.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b"A" * (1 << 20))
        sent = 0
        with contextlib.suppress(ConnectionError):
            for _ in range(400):
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 10)
                sent += len(chunk)
        try:
            answer = await asyncio.wait_for(reader.read(200), 10)
        except ConnectionError:  # the server's close hit our unsent data: the 411 may be lost in the reset
            answer = b"(reset)"
        writer.close()
        print(f"\nchunked body: {sent >> 20} MiB sent before the server closed the connection; answer {answer[:12]!r}")
        assert answer.startswith((b"HTTP/1.1 411", b"(reset)"))
        assert sent < 400 * len(chunk)
        assert server.refused["http_411"] == 1
        # Content-Length beyond the limit: 413 without reading a byte of it.
        reader, writer = await connect(port, ABUSER)
        writer.write(
            b"POST /agent/v1/sessions/s1/credentials HTTP/1.1\r\nHost: cb\r\nAuthorization: Bearer "
            + SECRET.encode()
            + b"\r\nContent-Length: 419430400\r\n\r\n"
        )
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 413")
        writer.close()
        # A huge head: 431.
        status, _ = await post(
            port, ABUSER, "/agent/v1/sessions/s1/events", b"{}", extra="X-Big: " + "b" * 40000 + "\r\n"
        )
        assert status == 431
        assert recorder.pushes == []


async def test_an_abusing_sandbox_is_cut_off_while_others_carry_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "hearth.agentlink")
    # A refill of one token per 10 s: the burst is spent within the 20 posts however slowly a loaded host sends them
    # (at 5/s, 20 posts spread over 2 s under the full suite's load met no 429).
    limits = Limits(rate=0.1, burst=10, strikes=5, strike_window=30, cutoff=60)
    async with callback_server(limits) as (port, server, recorder):
        statuses: list[int] = []
        for _ in range(20):
            try:
                statuses.append((await post(port, ABUSER, "/agent/v1/sessions/s1/events", b'{"event": "x"}'))[0])
            except (ConnectionError, IndexError):  # cut off: closed at accept (a reset, or no answer at all)
                statuses.append(0)
        assert statuses[0] == 200 and 429 in statuses and statuses[-1] == 0
        assert server.is_cut_off(ABUSER)
        assert any("cut off" in r.getMessage() and getattr(r, "source", "") == ABUSER for r in caplog.records)
        # Cut off: its connections are closed at accept, no answer at all.
        reader, writer = await connect(port, ABUSER)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        # The neighbour is unaffected.
        assert (await post(port, NEIGHBOUR, "/agent/v1/sessions/s2/events", b'{"event": "y"}'))[0] == 200
        assert recorder.events[-1] == ("s2", "y", "")


async def test_bodies_must_be_plain_json_and_authorised() -> None:
    async with callback_server(Limits(strikes=1000)) as (port, _, recorder):
        for bad in (b'{"event": NaN}', b'{"event": Infinity}', b'{"x": -Infinity}', b"[1]", b"{"):
            status, body = await post(port, ABUSER, "/agent/v1/sessions/s1/events", bad)
            assert status == 422, bad
            assert "JSON" in str(body["error"])
        assert (await post(port, ABUSER, "/agent/v1/sessions/s1/events", b"{}", secret="wrong"))[0] == 401
        assert (await post(port, ABUSER, "/agent/v1/sessions/x1/events", b"{}"))[0] == 404
        assert (await post(port, ABUSER, "/agent/v1/other", b"{}"))[0] == 404
        assert recorder.events == []


async def test_events_per_session_are_bounded() -> None:
    async with callback_server(Limits(rate=10_000, burst=10_000, strikes=1000)) as (port, _, recorder):
        statuses = [
            (await post(port, ABUSER, "/agent/v1/sessions/s1/events", b'{"event": "e", "detail": "d"}'))[0]
            for _ in range(MAX_EVENTS + 5)
        ]
        assert statuses.count(200) == MAX_EVENTS and statuses[-1] == 409
        assert len(recorder.events) == MAX_EVENTS
        # Bytes: long details use up the byte budget of another session well before its count.
        detail = "d" * 500
        body = json.dumps({"event": "e", "detail": detail}).encode()
        statuses = [(await post(port, ABUSER, "/agent/v1/sessions/s2/events", body))[0] for _ in range(150)]
        accepted = statuses.count(200)
        assert 0 < accepted < 150 and statuses[-1] == 409
        assert sum(len(e[2]) for e in recorder.events if e[0] == "s2") <= 64 * 1024


async def test_a_refused_push_is_answered_409() -> None:
    async with callback_server(Limits()) as (port, _, recorder):
        recorder.ended.add("s9")
        status, body = await post(port, ABUSER, "/agent/v1/sessions/s9/credentials", credentials_body())
        assert status == 409 and "not expected" in str(body["error"])
        assert recorder.pushes == []
