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
