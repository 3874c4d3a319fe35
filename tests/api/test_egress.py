"""GET /api/users/{id}/egress through the real app: the user's port (the same on every call, different users
different ports, never the proxy's credentials), API-key protected, documented in the OpenAPI; 404 without a proxy;
the proxy URL in no API answer and no database row."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.orm import Session

from hearth.config import Settings
from tests.api.offline import AUTH, asgi, declared, offline_app

SECRET = "Zq9-proxy-pass"
PROXY = {
    "HEARTH_EGRESS_PROXY": f"http://corp:{SECRET}@proxy.example.com:{{port}}",
    "HEARTH_EGRESS_PROXY_PORTS": "10001-10009",
    "HEARTH_EGRESS": "signin",
}


async def test_the_users_port_is_shown_never_the_password(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**PROXY)
    async with offline_app(settings) as off, asgi(off.app) as http:
        got = await asyncio.gather(*(http.get(f"/api/users/u{i % 3}/egress", headers=AUTH) for i in range(12)))
        assert all(r.status_code == 200 for r in got), [r.text for r in got]
        by_user: dict[str, set[int]] = {}
        for r in got:
            body = r.json()
            assert body["proxy"]["host"] == "proxy.example.com" and set(body) == {"user_id", "proxy"}
            by_user.setdefault(body["user_id"], set()).add(body["proxy"]["port"])
            assert SECRET not in r.text and "corp" not in r.text
        assert all(len(p) == 1 for p in by_user.values()) and len({min(p) for p in by_user.values()}) == 3
        assert all(10001 <= min(p) <= 10009 for p in by_user.values())
        assert (await http.get("/api/users/u0/egress")).status_code == 401
        schema = (await http.get("/openapi.json")).json()
        assert {200, 401, 404, 503} <= declared(schema, "GET", "/api/users/{user_id}/egress")
        everything = [(await http.get(p, headers=AUTH)).text for p in ("/api/sessions", "/openapi.json", "/ready")]
        assert not any(SECRET in t for t in everything)

        def dump(db: Session) -> str:
            rows = []
            for table in ("egress_ports", "sessions", "events", "sandboxes"):
                rows += [str(tuple(r)) for r in db.execute(text(f"select * from {table}"))]
            return "\n".join(rows)

        stored = off.ctl.db.call(dump)
        assert all(f"'u{i}'" in stored for i in range(3)), stored  # the rows are there...
        assert SECRET not in stored and "corp" not in stored  # ...without the proxy's credentials


async def test_without_a_proxy_the_answer_says_so(make_settings: Callable[..., Settings]) -> None:
    async with offline_app(make_settings()) as off, asgi(off.app) as http:
        r = await http.get("/api/users/u1/egress", headers=AUTH)
        assert r.status_code == 404 and "HEARTH_EGRESS_PROXY" in r.json()["error"]


async def test_a_full_range_is_503_naming_the_fix(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**{**PROXY, "HEARTH_EGRESS_PROXY_PORTS": "10001-10002"})
    async with offline_app(settings) as off, asgi(off.app) as http:
        # the offline app's session (user offline-user) took a port when its sandbox was booted; first takes the other
        ports = {
            (await http.get(f"/api/users/{u}/egress", headers=AUTH)).json()["proxy"]["port"]
            for u in ("offline-user", "first")
        }
        assert ports == {10001, 10002}
        r = await http.get("/api/users/second/egress", headers=AUTH)
        assert r.status_code == 503 and "HEARTH_EGRESS_PROXY_PORTS" in r.json()["error"], r.text
