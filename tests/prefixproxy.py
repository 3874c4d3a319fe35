"""A minimal reverse proxy that serves hearth under a path prefix, the way nginx does in the README's production
section: `<prefix>/…` → upstream `/…`, HTTP (streamed, so server-sent events pass) and WebSocket (subprotocol, close
code and reason passed through). A test stand-in for nginx, which this machine's tests do not install."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
}
Scope = dict[str, Any]


class PrefixProxy:
    def __init__(self, upstream: str, prefix: str) -> None:
        self.upstream = upstream.rstrip("/")  # http://host:port
        self.prefix = prefix.rstrip("/")
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(30, read=None))

    def _target(self, scope: Scope) -> str | None:
        path: str = scope["path"]
        if not path.startswith(self.prefix + "/"):
            return None
        qs = scope.get("query_string", b"").decode()
        return path[len(self.prefix) :] + (f"?{qs}" if qs else "")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await self.http.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        target = self._target(scope)
        if scope["type"] == "http":
            await self._http(scope, receive, send, target)
        elif scope["type"] == "websocket":
            await self._ws(scope, receive, send, target)

    async def _http(self, scope: Scope, receive: Any, send: Any, target: str | None) -> None:
        if target is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"outside the prefix"})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.decode().lower() not in HOP_BY_HOP]
        req = self.http.build_request(scope["method"], self.upstream + target, headers=headers, content=body)
        resp = await self.http.send(req, stream=True)
        try:
            out = [(k, v) for k, v in resp.headers.raw if k.decode().lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await resp.aclose()

    async def _ws(self, scope: Scope, receive: Any, send: Any, target: str | None) -> None:
        await receive()  # websocket.connect
        if target is None:
            await send({"type": "websocket.close", "code": 1008, "reason": "outside the prefix"})
            return
        url = self.upstream.replace("http", "ws", 1) + target
        try:
            upstream = await connect(url, subprotocols=scope.get("subprotocols") or None, max_size=None)
        except Exception as exc:
            await send({"type": "websocket.close", "code": 1011, "reason": f"upstream: {type(exc).__name__}"[:120]})
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def down() -> None:  # upstream → client
            with contextlib.suppress(ConnectionClosed):
                async for data in upstream:
                    key = "bytes" if isinstance(data, bytes) else "text"
                    await send({"type": "websocket.send", key: data})

        async def up() -> None:  # client → upstream
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    await upstream.close()
                    return
                data = msg.get("bytes")
                await upstream.send(data if data is not None else msg.get("text", ""))

        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        code, reason = upstream.close_code or 1000, upstream.close_reason or ""
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code, "reason": reason})
        await upstream.close()


@contextlib.asynccontextmanager
async def prefix_proxy(upstream: str, prefix: str, port: int) -> AsyncIterator[str]:
    """Serve `upstream` under `prefix` on loopback `port`; yields the proxy's base URL (with the prefix)."""
    config = uvicorn.Config(
        PrefixProxy(upstream, prefix), host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=2
    )  # an open event stream would otherwise hold the shutdown
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}{prefix.rstrip('/')}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
