"""`POST /v1/personalise` (a warm-pool hand-out): authorised by the pool secret, which the agent refuses afterwards;
the identity is replaced whole (the config the agent started with is never changed); bad bodies are refused and change
nothing. Real server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from hearth_agent.config import AgentConfig, Identity, parse_config
from hearth_agent.contract import routes
from hearth_agent.personalise import personalise_route
from hearth_agent.server import AgentServer

POOL = "pool-secret-0123456789"
NEW = "session-secret-9876543210"
Agent = tuple[str, AgentServer, AgentConfig]


@pytest.fixture
def agent() -> Iterator[Agent]:
    cfg = parse_config({"ip": "127.0.0.1", "secret": POOL, "providers": []})
    server = AgentServer(("127.0.0.1", 0), cfg.identity, lambda: {"ok": True})
    server.route("POST", routes.PERSONALISE, personalise_route(server))
    server.route("GET", "/v1/whoami", lambda _body: (200, {"session_id": server.identity.session_id}))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server, cfg
    finally:
        server.shutdown()
        server.server_close()


def call(base: str, secret: str, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(method, base + path, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=5)


def test_personalise_replaces_the_identity_whole(agent: Agent) -> None:
    base, server, cfg = agent
    before = server.identity
    body = {"secret": NEW, "session_id": "s-1", "providers": ["digest-a"]}
    assert call(base, "wrong-secret-000000", "POST", routes.PERSONALISE, body).status_code == 401
    r = call(base, POOL, "POST", routes.PERSONALISE, body)
    assert r.status_code == 200 and r.json() == {"personalised": True}
    assert call(base, POOL, "GET", "/v1/whoami").status_code == 401  # the pool secret is refused from now on
    assert call(base, NEW, "GET", "/v1/whoami").json() == {"session_id": "s-1"}
    assert server.identity == Identity(NEW, "s-1", ("digest-a",)) and server.identity is not before
    assert before == Identity(POOL, "", ()) and cfg.identity is before  # nothing was changed in place
    assert "secret" not in cfg.raw and "providers" not in cfg.raw  # the identity is nowhere else in the config
    assert NEW not in r.text


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"secret": "short", "session_id": "s", "providers": []}, "secret must be"),
        ({"secret": NEW, "session_id": "", "providers": []}, "session_id must be"),
        ({"secret": NEW, "session_id": "s", "providers": "digest"}, "providers must be"),
        ({"secret": NEW, "session_id": "s"}, "providers must be"),
    ],
)
def test_bad_personalise_changes_nothing(agent: Agent, body: dict[str, object], needle: str) -> None:
    base, server, _ = agent
    r = call(base, POOL, "POST", routes.PERSONALISE, body)
    assert r.status_code == 400 and needle in r.json()["error"] and NEW not in r.text
    assert call(base, POOL, "GET", "/v1/whoami").status_code == 200
    assert server.identity == Identity(POOL, "", ())
