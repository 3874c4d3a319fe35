"""API hardening (`hearth.api.limits`): body size limit (413) and per-client rate limit (429 + Retry-After).

No root needed: a small FastAPI app with the same middleware, driven in-process (ASGI) and over real loopback TCP.
Time is a fake clock: nothing here depends on wall-clock timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from websockets.asyncio.client import connect

from hearth.api import limits
from hearth.api.auth import ApiKeys
from hearth.config import Settings, load_settings
from hearth.serving.local import free_port

KEYS = ("key-a", "key-b")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def small_app(lim: limits.Limits, clock: Callable[[], float]) -> tuple[FastAPI, limits.RateLimiter]:
    app = FastAPI()

    @app.post("/api/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.get("/api/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.websocket("/api/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close(1000)

    return app, limits.add(app, lim, ApiKeys(KEYS), clock)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client


def test_token_bucket_is_pure_arithmetic() -> None:
    b = limits.TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)  # one token comes back after 1/rate
    assert b.take(0.25) == pytest.approx(0.25)
    assert b.take(0.5) == 0.0
    assert b.take(100.0) == 0.0 and b.tokens == pytest.approx(2.0)  # refill is capped at the burst
    assert b.take(50.0) == 0.0  # a clock going backwards never adds tokens


def test_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    rl = limits.RateLimiter(rate=1.0, burst=1, clock=clock, max_clients=100)
    for i in range(1000):
        assert rl.check(f"ip:10.0.{i // 250}.{i % 250}") == 0.0
    assert len(rl) == 100
    assert limits.RateLimiter(rate=0, burst=1, clock=clock).check("x") == 0.0  # rate 0: off


async def test_rate_limit_429_with_retry_after_and_reason() -> None:
    clock = FakeClock()
    app, limiter = small_app(limits.Limits(rate=1.0, burst=2), clock)
    async with asgi_client(app) as http:
        for _ in range(2):
            assert (await http.get("/api/ping", headers=bearer("key-a"))).status_code == 200
        r = await http.get("/api/ping", headers=bearer("key-a"))
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert "rate limit exceeded" in r.json()["error"] and "per API key" in r.json()["error"]
        print(f"\n429 body: {r.json()}")
        # another key has its own bucket; /health is never limited
        assert (await http.get("/api/ping", headers=bearer("key-b"))).status_code == 200
        for _ in range(20):
            assert (await http.get("/health")).status_code == 200
        clock.now += 1.0  # one token back
        assert (await http.get("/api/ping", headers=bearer("key-a"))).status_code == 200
        assert (await http.get("/api/ping", headers=bearer("key-a"))).status_code == 429
        assert limiter.refused == 2


async def test_random_keys_share_the_client_address_bucket() -> None:
    """Presenting a different made-up key each time gives no fresh bucket: invalid keys count per address."""
    app, _ = small_app(limits.Limits(rate=1.0, burst=3), FakeClock())
    async with asgi_client(app) as http:
        codes = [(await http.get("/api/ping", headers=bearer(f"made-up-{i}"))).status_code for i in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = await http.get("/api/ping")
        assert r.status_code == 429 and "per client address" in r.json()["error"]
        assert (await http.get("/api/ping", headers=bearer("key-a"))).status_code == 200


async def test_body_limit_on_content_length_and_while_streaming() -> None:
    app, _ = small_app(limits.Limits(max_body=1024, rate=0), FakeClock())
    async with asgi_client(app) as http:
        ok = await http.post("/api/echo", content=b'"' + b"x" * 1022 + b'"')  # API bodies are JSON
        assert ok.status_code == 200 and ok.json() == {"received": 1024}

        big = await http.post("/api/echo", content=b"x" * 1025)
        assert big.status_code == 413
        assert "request body too large" in big.json()["error"] and "1024" in big.json()["error"]

        sent = 0

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            nonlocal sent
            for _ in range(100):
                sent += 300
                yield b"y" * 300

        streamed = await http.post("/api/echo", content=chunks())
        assert streamed.status_code == 413
        print(f"\nstreamed body refused after {sent} of 30000 bytes were produced")
        assert sent < 30000  # the middleware stopped reading early

        bad = await http.post("/api/echo", content=b"{}", headers={"content-length": "nope"})
        assert bad.status_code == 400


def test_install_reads_the_settings() -> None:
    settings: Settings = load_settings({"HEARTH_API_KEYS": "k"}, env_file=None)
    app = FastAPI()
    limits.install(app, settings)
    limiter = app.state.rate_limiter
    assert isinstance(limiter, limits.RateLimiter)
    expected = limits.Limits.from_settings(settings)
    assert (limiter.rate, limiter.burst) == (expected.rate, expected.burst)
    assert expected.max_body >= 1024
    assert other_app_has_its_own_limiter(settings, limiter)


def other_app_has_its_own_limiter(settings: Settings, first: limits.RateLimiter) -> bool:
    app = FastAPI()
    limits.install(app, settings)
    return app.state.rate_limiter is not first


async def test_over_real_tcp_a_huge_upload_is_cut_and_the_server_stays_up() -> None:
    """uvicorn on loopback: a 100 MB Content-Length gets 413 without the body being read; so does an endless
    chunked upload; the server answers normally afterwards. The WebSocket is never rate limited."""
    app, _ = small_app(limits.Limits(max_body=64 * 1024, rate=1.0, burst=3), FakeClock())
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    task = asyncio.create_task(srv.serve())
    try:
        for _ in range(200):
            if srv.started:
                break
            await asyncio.sleep(0.05)
        assert srv.started

        def raw(request: bytes, body_chunks: int) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(request)
                with contextlib.suppress(OSError):  # the server may close while we still send
                    for _ in range(body_chunks):
                        s.sendall(b"z" * 65536)
                return s.recv(4096)

        head = b"POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        first = await asyncio.to_thread(raw, head + b"Content-Length: 100000000\r\n\r\n", 4)
        assert first.startswith(b"HTTP/1.1 413"), first[:200]
        chunk = b"10000\r\n" + b"z" * 65536 + b"\r\n"
        streamed = await asyncio.to_thread(raw, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3, 0)
        assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.post("/api/echo", content=b'"hey"')).json() == {"received": 5}
            assert (await http.get("/api/ping")).status_code == 429  # 3 requests: the bucket is empty now
            assert (await http.get("/health")).status_code == 200
        async with connect(f"ws://127.0.0.1:{port}/api/ws") as ws:
            assert await asyncio.wait_for(ws.recv(), 10) == "hello"
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_the_controller_app_has_the_limits(tmp_path: Path) -> None:
    """The real app (`hearth.controller.make_app`, driven over ASGI: no fabric, no root) refuses an oversized body
    and rate-limits /api/* — i.e. `limits.install(app, settings)` is wired in."""
    from hearth.controller import build, make_app

    settings = load_settings(
        {"HEARTH_DATA_DIR": str(tmp_path), "HEARTH_API_KEYS": "k", "HEARTH_DRIVER": "netns"}, env_file=None
    )
    ctl = build(settings)
    try:
        app = make_app(ctl)
        assert isinstance(getattr(app.state, "rate_limiter", None), limits.RateLimiter), (
            "limits.install(app, settings) is not wired in hearth/api/app.py"
        )
        async with asgi_client(app) as http:
            big = await http.post("/api/auth/start", content=b"{" + b" " * (1 << 20) + b"}", headers=bearer("k"))
            assert big.status_code == 413, big.text
            codes = Counter(
                [(await http.get("/api/auth/session/nope", headers=bearer("k"))).status_code for _ in range(200)]
            )
            print(f"\n200 rapid requests with one key: {dict(codes)}")
            assert codes[404] >= 1 and codes[429] >= 1 and set(codes) == {404, 429}
            assert (await http.get("/health")).status_code == 200
    finally:
        ctl.db.dispose()


@pytest.mark.parametrize("body", [b'{"user_id": NaN}', b'{"user_id": "a", "x": Infinity}', b'{"user_id": -Infinity}'])
async def test_non_json_numbers_are_refused_422(tmp_path: Path, body: bytes) -> None:
    """`{"user_id": NaN}` was a 500 with a traceback (the validation error could not be rendered)."""
    from hearth.controller import build, make_app

    settings = load_settings(
        {"HEARTH_DATA_DIR": str(tmp_path), "HEARTH_API_KEYS": "k", "HEARTH_DRIVER": "netns"}, env_file=None
    )
    ctl = build(settings)
    try:
        async with asgi_client(make_app(ctl)) as http:
            r = await http.post(
                "/api/auth/start", content=body, headers={**bearer("k"), "Content-Type": "application/json"}
            )
            assert r.status_code == 422, r.text
            assert "not a JSON number" in r.json()["error"]
    finally:
        ctl.db.dispose()
