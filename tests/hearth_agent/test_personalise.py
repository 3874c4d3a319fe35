"""`POST /v1/personalise` (a warm-pool hand-out): authorised by the pool secret, which the agent refuses afterwards;
bad bodies are refused and change nothing. Real server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from hearth_agent.config import parse_config
from hearth_agent.personalise import personalise_route
from hearth_agent.server import AgentServer

POOL = "pool-secret-0123456789"
NEW = "session-secret-9876543210"


@pytest.fixture
def agent() -> Iterator[tuple[str, dict[str, object]]]:
    cfg = parse_config({"ip": "127.0.0.1", "secret": POOL, "providers": []})
    server = AgentServer(("127.0.0.1", 0), POOL, lambda: {"ok": True})
    server.route("POST", "/v1/personalise", personalise_route(server, cfg))
    server.route("GET", "/v1/whoami", lambda _body: (200, {"session_id": cfg.raw.get("session_id")}))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", cfg.raw  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()


def call(base: str, secret: str, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, base + path, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=5)


def test_personalise_swaps_secret_and_providers(agent: tuple[str, dict[str, object]]) -> None:
    base, raw = agent
    body = {"secret": NEW, "session_id": "s-1", "providers": ["digest-a"]}
    assert call(base, "wrong-secret-000000", "POST", "/v1/personalise", body).status_code == 401
    r = call(base, POOL, "POST", "/v1/personalise", body)
    assert r.status_code == 200 and r.json() == {"personalised": True}
    assert call(base, POOL, "GET", "/v1/whoami").status_code == 401  # the pool secret is refused from now on
    assert call(base, NEW, "GET", "/v1/whoami").json() == {"session_id": "s-1"}
    assert raw["providers"] == ["digest-a"] and raw["secret"] == NEW
    assert NEW not in r.text


@pytest.mark.parametrize(
    "body",
    [
        {"secret": "short", "session_id": "s", "providers": []},
        {"secret": NEW, "session_id": "", "providers": []},
        {"secret": NEW, "session_id": "s", "providers": "digest"},
    ],
)
def test_bad_personalise_changes_nothing(agent: tuple[str, dict[str, object]], body: dict[str, object]) -> None:
    base, raw = agent
    assert call(base, POOL, "POST", "/v1/personalise", body).status_code == 400
    assert call(base, POOL, "GET", "/v1/whoami").status_code == 200
    assert raw["secret"] == POOL and raw["providers"] == []
