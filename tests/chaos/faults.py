"""One outage scenario, run against each way the store can fail (database server down, disk full, data dir gone).

While the store is broken: /ready is 503 + Retry-After naming `[store]`, /health says ok false, a start is 503 +
Retry-After with a `[store]` reason free of library names, a connected viewer keeps streaming, and a cancel still
removes the sandbox. After the fault is fixed (when it can be): /ready recovers on its own, the cancel is recorded,
its lease released, new sessions start, and nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from sqlalchemy import select
from websockets.asyncio.client import connect

from hearth.fabric import netlink
from hearth.rfb.client import handshake, request_frame
from hearth.rfb.ws import WsByteStream
from hearth.store.models import LeaseRow
from tests.conftest import Running
from tests.live import start_ready
from tests.waits import eventually, wait_session

FOREIGN = ("sqlalche", "OperationalError", "psycopg", "sqlite3", "Traceback", "postgresql://", "Error:")


def assert_store_refusal(r: httpx.Response) -> str:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    reason = str(r.json()["error"])
    assert reason.startswith("[store] "), reason
    assert not any(f in r.text for f in FOREIGN), r.text
    return reason


async def outage(
    ctl: Running,
    breaks: Callable[[], Awaitable[None]],
    fixes: Callable[[], Awaitable[None]] | None,
    broken_check: str = "store",
) -> None:
    async with httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http:
        assert (await http.get("/ready")).status_code == 200, (await http.get("/ready")).text
        watched = await start_ready(http, ctl.settings, "viewer-user")
        doomed = await start_ready(http, ctl.settings, "cancel-user")
        async with connect(watched.ws_url(ctl), subprotocols=["binary"], max_size=None) as ws:  # type: ignore[list-item]
            stream = WsByteStream(ws, 30)
            init = await handshake(stream.read, stream.write)
            assert await request_frame(stream.read, stream.write, init)

            await breaks()

            ready = await http.get("/ready")
            assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0, ready.text
            assert ready.json()["detail"][broken_check].startswith("["), ready.json()
            health = await http.get("/health")
            assert health.status_code == 200 and health.json()["ok"] is False, health.text
            assert_store_refusal(await http.post("/api/auth/start", json={"user_id": "new-user"}))

            # The live viewer keeps streaming through the outage.
            assert await request_frame(stream.read, stream.write, init)

            # Cancel cannot be written, but the sandbox goes all the same.
            assert_store_refusal(await http.post(f"/api/auth/session/{doomed.session_id}/cancel"))
            assert not netlink.netns_exists(doomed.netns)
            assert await request_frame(stream.read, stream.write, init)

            if fixes is None:
                return
            await fixes()

        async def is_ready() -> bool:
            return (await http.get("/ready")).status_code == 200

        await eventually(is_ready, 60, "/ready after the fault was fixed", interval=0.2)

        async def recorded() -> bool:
            # the cancel is recorded, then its lease released (record_pending: two statements, in that order)
            r = await http.get(f"/api/auth/session/{doomed.session_id}")
            leases = ctl.ctl.db.call(lambda d: list(d.scalars(select(LeaseRow.session_id))))
            return r.status_code == 200 and r.json()["status"] == "cancelled" and doomed.session_id not in leases

        await eventually(recorded, 60, "the cancel recorded and its lease released after the outage", interval=0.2)
        fresh = await http.post("/api/auth/start", json={"user_id": "after-user"})
        assert fresh.status_code == 201, fresh.text
        body = await wait_session(http, fresh.json()["session_id"])
        assert body["status"] == "ready", body
        for sid in (watched.session_id, fresh.json()["session_id"]):
            assert (await http.post(f"/api/auth/session/{sid}/cancel")).json()["status"] == "cancelled"
        assert ctl.ctl.db.call(lambda d: list(d.scalars(select(LeaseRow.session_id)))) == []
