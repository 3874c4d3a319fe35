"""GET /api/webhooks/deliveries: API key, newest first, pages chained by `next_before`, filters, every status code
declared in the OpenAPI. Real store (SQLite, and PostgreSQL in the second pass), the route in a FastAPI app."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.orm import Session as Db

from hearth.api import webhooks
from hearth.api.auth import ApiKeys
from hearth.config import Settings
from hearth.edge.app import create_edge_app
from hearth.store.db import Database
from hearth.store.models import OutboxRow
from hearth.webhooks.outbox import Outbox

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
KEY = {"Authorization": "Bearer k1"}


@pytest.fixture
async def api(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    s = make_settings(HEARTH_WEBHOOK_URL="http://127.0.0.1:9/h", HEARTH_WEBHOOK_SECRET=SECRET)
    db = Database(s.db_url, s.data_dir)
    outbox = Outbox(s)
    for i in range(7):

        def add(d: Db, n: int = i) -> None:
            outbox.add(d, "session.ready", f"s{n % 2}", {"session_id": f"s{n % 2}", "n": n})

        db.call(add)
    failed_at = datetime.now(UTC)
    db.call(
        lambda d: d.execute(
            update(OutboxRow)
            .where(OutboxRow.id == select(OutboxRow.id).order_by(OutboxRow.id).limit(1).scalar_subquery())
            .values(state="failed", attempts=9, last_status=500, last_error="[webhook] h answered HTTP 500")
        )
    )
    db.call(lambda d: d.execute(update(OutboxRow).where(OutboxRow.state == "pending").values(attempted_at=failed_at)))
    app = FastAPI()
    app.include_router(webhooks.make_router(db, ApiKeys(["k1"]), True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client, db
    db.dispose()


async def test_needs_the_api_key(api: tuple[httpx.AsyncClient, Database]) -> None:
    client, _ = api
    assert (await client.get("/api/webhooks/deliveries")).status_code == 401
    assert (await client.get("/api/webhooks/deliveries", headers={"Authorization": "Bearer no"})).status_code == 401


async def test_pages_newest_first_and_filters(api: tuple[httpx.AsyncClient, Database]) -> None:
    client, _ = api
    seen: list[int] = []
    before: int | None = None
    for _ in range(10):  # bounded: 7 rows, 3 per page
        params = {"limit": 3, **({"before": before} if before else {})}
        page = (await client.get("/api/webhooks/deliveries", params=params, headers=KEY)).json()
        assert page["enabled"] is True
        seen += [d["sequence"] for d in page["deliveries"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == 7 == len(set(seen))
    failed = (await client.get("/api/webhooks/deliveries", params={"state": "failed"}, headers=KEY)).json()
    (one,) = failed["deliveries"]
    assert (one["state"], one["attempts"], one["last_status"], one["next_attempt_at"]) == ("failed", 9, 500, None)
    assert one["last_error"] == "[webhook] h answered HTTP 500" and one["webhook_id"].startswith("msg_")
    pending = (await client.get("/api/webhooks/deliveries", params={"state": "pending"}, headers=KEY)).json()
    assert len(pending["deliveries"]) == 6 and all(d["next_attempt_at"] for d in pending["deliveries"])
    s1 = (await client.get("/api/webhooks/deliveries", params={"session_id": "s1"}, headers=KEY)).json()
    assert {d["stream"] for d in s1["deliveries"]} == {"s1"} and len(s1["deliveries"]) == 3


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"state": "sent"}, {"before": 0}, {"before": 2**31}, {"session_id": "a b"}],
)
async def test_bad_parameters_are_422(api: tuple[httpx.AsyncClient, Database], params: dict[str, int | str]) -> None:
    client, _ = api
    assert (await client.get("/api/webhooks/deliveries", params=params, headers=KEY)).status_code == 422


async def test_every_status_code_is_declared(api: tuple[httpx.AsyncClient, Database]) -> None:
    client, _ = api
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/api/webhooks/deliveries"]["get"]
    assert set(op["responses"]) == {"200", "400", "401", "413", "422", "429", "503"}  # 400/413/429: the limits
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/DeliveriesOut")


async def test_an_edge_answers_from_the_shared_store(
    api: tuple[httpx.AsyncClient, Database], make_settings: Callable[..., Settings]
) -> None:
    client, db = api
    s = make_settings(HEARTH_API_KEYS="k1", HEARTH_WEBHOOK_URL="http://127.0.0.1:9/h", HEARTH_WEBHOOK_SECRET=SECRET)
    edge = create_edge_app(s, db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://e") as via_edge:
        there = (await via_edge.get("/api/webhooks/deliveries", headers=KEY)).json()
        assert (await via_edge.get("/api/webhooks/deliveries")).status_code == 401
    here = (await client.get("/api/webhooks/deliveries", headers=KEY)).json()
    assert there == here and len(there["deliveries"]) == 7
