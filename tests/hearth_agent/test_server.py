"""The agent's HTTP server binds without name lookups: HTTPServer's reverse DNS of the listen address went to a
resolver the sandbox cannot reach and delayed every reused sandbox slot by the resolver timeout (5 s)."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from hearth_agent.server import AgentServer
from hearth_example.idp import IdpServer, IdpState


def _no_lookup(*_args: object) -> str:
    raise AssertionError("the server looked up a host name while binding")


def test_agent_server_binds_without_reverse_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", _no_lookup)
    monkeypatch.setattr(socket, "gethostbyaddr", _no_lookup)
    server = AgentServer(("127.0.0.1", 0), "s3cret", lambda: {"ok": True})
    try:
        host, port = str(server.server_address[0]), int(server.server_address[1])
        assert (server.server_name, server.server_port) == (host, port)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        r = httpx.get(f"http://{host}:{port}/health", timeout=5)
        assert r.status_code == 200 and r.json() == {"ok": True}
    finally:
        server.shutdown()
        server.server_close()


def test_example_idp_binds_without_reverse_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", _no_lookup)
    monkeypatch.setattr(socket, "gethostbyaddr", _no_lookup)
    server = IdpServer(("127.0.0.1", 0), IdpState(auto_approve=True))
    try:
        assert server.server_name == "127.0.0.1"
    finally:
        server.server_close()


def test_health_with_wait_is_held_until_the_agent_is_ready() -> None:
    """Readiness by notification: `GET /health?wait=` is answered when the agent's `wait_ready` returns (the display
    runs), not before; without `wait`, or with a bad one, at once."""
    ready, entered = threading.Event(), threading.Event()
    waits: list[float] = []

    def wait_ready(timeout: float) -> bool:
        waits.append(timeout)
        entered.set()
        return ready.wait(timeout)

    server = AgentServer(("127.0.0.1", 0), "s3cret", lambda: {"ok": ready.is_set()})
    server.wait_ready = wait_ready
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert httpx.get(f"{base}/health", timeout=5).json() == {"ok": False}
        assert httpx.get(f"{base}/health?wait=nope", timeout=5).json() == {"ok": False}
        assert waits == []
        answers: list[httpx.Response] = []
        held = threading.Thread(target=lambda: answers.append(httpx.get(f"{base}/health?wait=60", timeout=30)))
        held.start()
        assert entered.wait(30)
        assert answers == [] and held.is_alive()  # held while not ready
        ready.set()
        held.join(30)
        assert [a.json() for a in answers] == [{"ok": True}]
        assert waits == [10.0]  # held at most MAX_WAIT, whatever the caller asks
    finally:
        ready.set()
        server.shutdown()
        server.server_close()
