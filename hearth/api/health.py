"""`/health` and `/ready`: the same honest checks — the data dir is the one hearth opened (same inode), the database
answers and takes a write, the data dir's disk has room (HEARTH_MIN_FREE_MB), the fabric is up.

`/health` answers 200 while the process serves (liveness) with `ok` telling the truth; `/ready` answers 503 with
`Retry-After` and the failing checks' reasons whenever one fails, so a load balancer stops sending work.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from hearth.api.schemas import Health
from hearth.config import Settings
from hearth.errors import HearthError, Hop
from hearth.fabric.fabric import Fabric
from hearth.store.db import Database

CHECK_TIMEOUT = 5.0
RETRY_AFTER = 5


async def checks(s: Settings, db: Database, fab: Fabric) -> dict[str, str]:
    """Each check's name → "ok" or the reason it failed (naming the hop and the fix)."""

    async def data_dir() -> None:
        db.check_data_dir()

    async def store() -> None:
        await db.offload(db.probe)

    async def disk() -> None:
        free = (await db.offload(lambda: shutil.disk_usage(s.data_dir))).free // (1 << 20)
        if free < s.min_free_mb:
            raise HearthError(
                Hop.STORE,
                f"only {free} MiB free for the data dir {s.data_dir} (HEARTH_MIN_FREE_MB={s.min_free_mb})",
                "free disk space or move HEARTH_DATA_DIR",
            )

    async def fabric() -> None:
        if s.dial_netns is None:
            return  # the loopback driver (tests): no fabric namespace to check
        st = await fab.status()
        if not (st.netns_exists and st.bridge_up):
            why = "; ".join(st.problems) or f"namespace {st.netns} or bridge {st.bridge} missing"
            raise HearthError(Hop.FABRIC, f"fabric not up: {why}", "run `hearth fabric up`")

    found: dict[str, str] = {}
    probes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("data_dir", data_dir),
        ("store", store),
        ("disk", disk),
        ("fabric", fabric),
    ]
    for name, probe in probes:
        try:
            await asyncio.wait_for(probe(), CHECK_TIMEOUT)
            found[name] = "ok"
        except HearthError as exc:
            found[name] = exc.reason
        except TimeoutError:
            found[name] = f"[{name}] no answer within {CHECK_TIMEOUT:.0f}s"
        except OSError as exc:
            found[name] = f"[{name}] {exc.strerror or 'I/O error'}"
        if name == "data_dir" and found[name] != "ok":
            found["store"] = found["disk"] = "skipped: the data dir is gone"
            break
    return found


def make_router(settings: Settings, db: Database, fab: Fabric, driver: str, active: Callable[[], int]) -> APIRouter:
    """`active`: how many sessions this node serves right now."""
    router = APIRouter(tags=["health"])

    async def report() -> Health:
        found = await checks(settings, db, fab)
        ok = all(v == "ok" for v in found.values())
        return Health(ok=ok, driver=driver, fabric=settings.fabric_netns, active_sessions=active(), detail=found)

    @router.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness (200 while the process serves); `ok` and `detail` tell whether it can do work. No auth."""
        return await report()

    @router.get("/ready", response_model=Health, responses={503: {"model": Health}})
    async def ready() -> JSONResponse:
        """Readiness for load balancers: 503 + Retry-After while any check fails. No authentication."""
        body = await report()
        if body.ok:
            return JSONResponse(body.model_dump())
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": str(RETRY_AFTER)})

    return router
