"""The edge relays a prompt's WebSocket stream from the node that runs it (hearth/edge/promptws.py).

Real edge app (create_edge_app) and a real node-side socket, both uvicorn on loopback, a real store routing the
prompt. The node is a stand-in serving only the prompt stream (the prompts service itself is proven end to end in
tests/prompts/test_e2e.py); it admits callers with the real ApiKeys, so the node credential path is the real one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
import websockets
from fastapi import FastAPI, WebSocket
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hearth.api.auth import ApiKeys
from hearth.cluster.credential import NodeCredential
from hearth.config import Settings
from hearth.edge.app import create_edge_app
from hearth.store.db import Database
from hearth.store.models import NodeRow, PromptRow

KEY = "k-h11-" + "x" * 24
RING = "e1:" + "s" * 32
EVENTS: list[dict[str, Any]] = [{"event": "text", "id": i, "data": {"text": f"part {i}"}} for i in range(1, 6)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_app(seen: list[dict[str, str]]) -> FastAPI:
    keys = ApiKeys([KEY], NodeCredential.from_setting(RING))
    app = FastAPI()

    @app.websocket("/api/prompts/{prompt_id}/stream")
    async def stream(ws: WebSocket, prompt_id: str, last_event_id: int = 0, raw: bool = False) -> None:
        seen.append({k: v for k, v in ws.headers.items()})
        if not keys.admits(ws):
            await ws.close(code=4401, reason="missing or invalid API key")
            return
        await ws.accept()
        for ev in EVENTS:
            if ev["id"] > last_event_id:
                await ws.send_json({**ev, "raw": raw, "prompt": prompt_id})
        await ws.close(1000, "end")

    return app


@contextlib.asynccontextmanager
async def serve(app: Any, port: int) -> AsyncIterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def frames(url: str, headers: dict[str, str]) -> tuple[list[dict[str, Any]], int | None, str | None]:
    got: list[dict[str, Any]] = []
    async with websockets.connect(url, additional_headers=headers, open_timeout=20) as ws:
        with contextlib.suppress(ConnectionClosed):
            async for m in ws:
                got.append(json.loads(m))
    return got, ws.close_code, ws.close_reason


@pytest.mark.sqlite_pass
async def test_prompt_websocket_is_relayed_through_the_edge(make_settings: Callable[..., Settings]) -> None:
    node_port, down_port, edge_port = free_port(), free_port(), free_port()
    settings = make_settings(HEARTH_API_KEYS=KEY, HEARTH_NODE_CREDENTIAL=RING)
    db = Database(settings.db_url, settings.data_dir)

    def seed(s: Any) -> None:
        s.add(NodeRow(id="n1", address=f"http://127.0.0.1:{node_port}", state="up"))
        s.add(NodeRow(id="n2", address=f"http://127.0.0.1:{down_port}", state="up"))  # nothing listens there
        for pid, nid in (("p1", "n1"), ("p2", "n2")):
            s.add(
                PromptRow(
                    id=pid, user_id="u", provider="example", node_id=nid, status="running",
                    permissions="read_only", timeout=5.0, usage={}, timings={}, truncated=False,
                    last_seq=0, answer_bytes=0,
                )
            )  # fmt: skip

    db.call(seed)
    seen: list[dict[str, str]] = []
    auth = {"Authorization": f"Bearer {KEY}"}
    async with serve(node_app(seen), node_port), serve(create_edge_app(settings, db), edge_port) as edge:
        got, code, _ = await frames(f"{edge}/api/prompts/p1/stream", auth)
        assert [e["id"] for e in got] == [1, 2, 3, 4, 5] and all(e["prompt"] == "p1" for e in got)
        assert code == 1000
        # the node got the node credential, not the caller's key
        assert "authorization" not in seen[-1] and seen[-1]["x-hearth-edge"].startswith("e1.")
        # resume and raw are passed on
        got, _, _ = await frames(f"{edge}/api/prompts/p1/stream?last_event_id=3&raw=true", auth)
        assert [e["id"] for e in got] == [4, 5] and all(e["raw"] is True for e in got)
        # a wrong key is refused at the edge; the node never sees it
        before = len(seen)
        with pytest.raises(InvalidStatus):
            await frames(f"{edge}/api/prompts/p1/stream", {"Authorization": "Bearer wrong"})
        with pytest.raises(InvalidStatus):
            await frames(f"{edge}/api/prompts/p1/stream", {})
        assert len(seen) == before
        # an unknown prompt is refused
        with pytest.raises(InvalidStatus):
            await frames(f"{edge}/api/prompts/nope/stream", auth)
        # a node that does not answer: the client is closed with 4502 naming it
        got, code, reason = await frames(f"{edge}/api/prompts/p2/stream", auth)
        assert got == [] and code == 4502 and reason is not None and "n2" in reason
    db.dispose()
