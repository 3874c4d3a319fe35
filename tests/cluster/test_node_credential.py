"""Edge → node with a node credential, not the caller's API key (issue 24): the edge checks the API key itself and
forwards without it, carrying X-Hearth-Edge (a real loopback node that records what it is sent); a node admits an
edge's credential from any key of its ring (rotation: new key first, the old one still verifies) and refuses a wrong,
stale or re-aimed one. The node here is the real controller app (tests/api/offline.py); the store is real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from hearth.cluster import nodes
from hearth.cluster.credential import HEADER, NodeCredential, parse_credential_ring
from hearth.config import Settings
from hearth.errors import ConfigError
from hearth.store.db import Database
from tests.api.offline import AUTH, asgi, offline_app
from tests.cluster.labkit import edge_app

OLD = "k1:" + "o" * 32
NEW = "k2:" + "n" * 32
WRONG = "k1:" + "w" * 32


@contextlib.asynccontextmanager
async def recording_node() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A node address on loopback answering every request 200 `{}`; yields it and the header sets it received."""
    seen: list[dict[str, str]] = []

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
        seen.append({**headers, ":request": head.decode("latin-1").split("\r\n")[0]})
        if int(headers.get("content-length", "0")):
            await asyncio.wait_for(r.readexactly(int(headers["content-length"])), 10)
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        await w.drain()
        w.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
    finally:
        server.close()


@pytest.fixture
async def edge(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    async with edge_app(
        make_settings(HEARTH_API_KEYS="k1", HEARTH_RATE_LIMIT="0", HEARTH_NODE_CREDENTIAL=f"{NEW},{OLD}")
    ) as pair:
        yield pair


async def test_the_edge_checks_the_api_key_and_sends_the_node_credential_instead(
    edge: tuple[httpx.AsyncClient, Database],
) -> None:
    client, db = edge
    async with recording_node() as (address, seen):
        nodes.heartbeat(db, nodes.Registration("h1", address, 4, 4, ("netns",), "0.1.0"))
        forged = {HEADER: "k2.1.forged"}  # a caller's own X-Hearth-Edge never reaches the node
        r = await client.get("/api/users/alice/cli", headers={"Authorization": "Bearer k1", **forged})
        assert r.status_code == 200, r.text
        assert len(seen) == 1
        sent = seen[0]
        assert "authorization" not in sent  # the API key stays at the edge
        method, target, _ = sent[":request"].split(" ")
        assert (method, target.partition("?")[0]) == ("GET", "/api/users/alice/cli")
        ring = NodeCredential(parse_credential_ring(f"{NEW},{OLD}"))
        assert sent[HEADER].startswith("k2.")  # the first key signs
        assert ring.verify(sent[HEADER], "GET", "/api/users/alice/cli")
        assert not ring.verify(sent[HEADER], "DELETE", "/api/users/alice/cli")  # bound to its method and path
        assert not ring.verify(sent[HEADER], "GET", "/api/users/bob/cli")

        r = await client.get("/api/users/alice/cli", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "invalid API key" in r.text
        assert len(seen) == 1  # refused at the edge: nothing reached the node

        r = await client.get("/api/users/alice/cli")  # no key: passed on without a credential (the node decides)
        assert r.status_code == 200
        assert HEADER not in seen[1] and "authorization" not in seen[1]


async def test_a_node_admits_any_key_of_its_ring_and_refuses_a_wrong_stale_or_reaimed_credential(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(HEARTH_NODE_CREDENTIAL=f"{NEW},{OLD}", HEARTH_RATE_LIMIT="0")
    async with offline_app(s) as off, asgi(off.app) as http:
        path = f"/api/auth/session/{off.session_id}"

        def cred(ring: str, method: str = "GET", at: float | None = None) -> dict[str, str]:
            c = NodeCredential(parse_credential_ring(ring), clock=(lambda: at) if at is not None else time.time)
            return {HEADER: c.present(method, path)}

        for ring in (OLD, NEW, f"{NEW},{OLD}"):  # an edge not yet rotated, one rotated, one mid-rotation
            r = await http.get(path, headers=cred(ring))
            assert r.status_code == 200, (ring, r.text)
        for bad in (cred(WRONG), cred(OLD, "DELETE"), cred(OLD, at=1_000_000.0), {HEADER: "garbage"}):
            r = await http.get(path, headers={**bad, **AUTH})  # a bad credential is refused even beside a key
            assert r.status_code == 401, (bad, r.text)
            assert "invalid node credential (X-Hearth-Edge)" in r.json()["error"]
            assert "HEARTH_NODE_CREDENTIAL" in r.json()["error"]
        assert (await http.get(path)).status_code == 401  # neither: refused as before
        assert (await http.get(path, headers=AUTH)).status_code == 200  # direct callers: the API key still works
        r = await http.get(path, headers={"Authorization": f"Bearer {OLD}"})  # a node credential is no API key
        assert r.status_code == 401


@pytest.mark.parametrize(
    ("value", "words"),
    [("k1", "kid:secret"), ("k1:short", "at least 16 bytes"), (f"{OLD},{OLD}", "distinct"), ("a.b:" + "x" * 20, "'.'")],
)
def test_a_bad_credential_ring_is_refused_naming_the_fix(
    make_settings: Callable[..., Settings], value: str, words: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        make_settings(HEARTH_NODE_CREDENTIAL=value)
    assert any("HEARTH_NODE_CREDENTIAL" in p and words in p for p in refused.value.problems), refused.value.problems
    assert not any(value in p for p in refused.value.problems if len(value) > 8)  # the secret is never echoed


def test_the_credential_is_hidden_in_the_effective_configuration(make_settings: Callable[..., Settings]) -> None:
    from hearth.config import origins

    s = make_settings(HEARTH_NODE_CREDENTIAL=OLD)
    shown = json.dumps([o.__dict__ for o in origins(s, environ={}, env_file=None)])
    assert OLD.split(":")[1] not in shown and "<set, hidden>" in shown
