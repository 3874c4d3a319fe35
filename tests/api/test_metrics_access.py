"""/metrics is not public on the API port (issue 24): it needs an API key there; HEARTH_METRICS_LISTEN serves it
without one on a listener of its own (a real loopback socket), which answers nothing else and names its setting when
it cannot be bound."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.observe.listener import serve_metrics
from tests.api.offline import AUTH, asgi, offline_app


async def test_the_api_port_serves_metrics_only_with_an_api_key(make_settings: Callable[..., Settings]) -> None:
    async with offline_app(make_settings(HEARTH_RATE_LIMIT="0")) as off, asgi(off.app) as http:
        anon = await http.get("/metrics")
        assert anon.status_code == 401, anon.text
        assert "hearth_" not in anon.text
        assert "API key" in anon.json()["error"]
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await http.get("/metrics", headers=AUTH)
        assert ok.status_code == 200
        assert "hearth_" in ok.text and ok.headers["content-type"].startswith("text/plain")


async def test_the_metrics_listener_serves_metrics_without_a_key_and_nothing_else() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await serve_metrics(f"127.0.0.1:{port}", lambda: b"hearth_up 1\n")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            r = await http.get("/metrics")
            assert r.status_code == 200 and r.text == "hearth_up 1\n"
            assert r.headers["content-type"] == "text/plain; version=0.0.4"
            for path in ("/", "/api/auth/start", "/metrics/../api"):
                assert (await http.get(path)).status_code == 404
            assert (await http.post("/metrics")).status_code == 404
        # a client that sends nothing (it is let go after READ_TIMEOUT) does not hold up the others
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
        w.close()
        with pytest.raises(HearthError) as taken:  # the port is in use: the error names the setting and the fix
            await serve_metrics(f"127.0.0.1:{port}", lambda: b"")
        assert "HEARTH_METRICS_LISTEN" in taken.value.reason and "HEARTH_METRICS_LISTEN" in taken.value.hint
    finally:
        server.close()
        await server.wait_closed()
