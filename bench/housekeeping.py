"""Controller housekeeping CPU at many idle sessions: the pass `hearth serve` runs every 2 s (the watchdog, expiry,
the warm pool; the reconciler every HEARTH_RECONCILE_INTERVAL) against N idle session rows of this node, each with its
lease and a sandbox this controller runs (no real sandbox: the rows are inserted directly, and the driver answers
every sandbox alive, so what is measured is the controller's own work: the store and Python).

    .venv/bin/python bench/housekeeping.py --sessions 10,1000 [--ticks 20] [--database-url postgresql+psycopg://…]

Prints, per N: SQL statements per tick, CPU seconds per tick and per reconciler pass, and the controller's CPU as a
share of one core at the production cadence (a tick every 2 s, a reconciler pass every 60 s). Uses its own data dir
(SQLite in it; with --database-url, a fresh database of its own on that PostgreSQL server, dropped afterwards);
creates no network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event

from hearth.clisandbox.manager import CliSandboxes
from hearth.config import Settings
from hearth.fabric.ipam import Ipam
from hearth.lifecycle.manager import SandboxManager
from hearth.lifecycle.sandbox import Kind, SandboxState
from hearth.reconcile.reconciler import Reconciler
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.netns import NetnsDriver
from hearth.serving.local import scratch_settings
from hearth.session.service import SessionService
from hearth.store.db import Database
from hearth.store.models import LeaseRow, SessionRow
from hearth.store.pglocal import fresh_database
from hearth.vault.keys import KeyRing, MasterKey
from hearth.vault.store import Vault

PERIOD = 2.0  # hearth/controller.py `housekeeping`
NETWORK = {  # room for 2,045 leases (no address is ever configured: nothing is booted)
    "INTERNAL_NETWORK": "10.77.0.0/21",
    "BRIDGE_IP": "10.77.0.1",
    "IP_POOL_START": "10.77.0.2",
    "IP_POOL_END": "10.77.7.254",
}


class AliveDriver(NetnsDriver):
    async def alive(self, spec: SandboxSpec) -> bool:
        return True


def fill(svc: SessionService, n: int) -> None:
    """`n` idle ready sessions of this node, with leases, run (as far as the manager knows) by this controller."""
    s, now = svc.settings, datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(n)]

    def insert(db: Any) -> None:
        for index, sid in enumerate(ids):
            ip = str(svc.ipam.slot(index).ip)
            db.add(
                SessionRow(
                    id=sid, node_id=s.node_id, user_id=f"idle{index}", provider="example", mode="remote_browser",
                    status="ready", driver="netns", fabric=s.fabric_netns, slot=index, sandbox_ip=ip,
                    created_at=now, last_seen_at=now,
                )
            )  # fmt: skip
            db.add(LeaseRow(node_id=s.node_id, fabric=s.fabric_netns, slot=index, ip=ip, session_id=sid))

    svc.db.call(insert)
    for index, sid in enumerate(ids):
        sb = svc.sandboxes._sandbox(sid, Kind.SESSION, svc.sandboxes.spec(sid, svc.ipam.slot(index), secret="bench"))
        sb.state = SandboxState.RUNNING
        svc.sandboxes._live[sid] = sb


async def measure(settings: Settings, n: int, ticks: int) -> tuple[float, float, int]:
    """(CPU s per tick, CPU s per reconciler pass, statements per tick) at `n` idle sessions."""
    db = Database(settings.db_url)
    try:
        driver = AliveDriver(settings)
        ring = KeyRing([MasterKey.of(secrets.token_bytes(32))], None)  # in memory: a bench creates no key files
        svc = SessionService(settings, db, driver, SandboxManager(settings, db, driver, Ipam(settings, db), ring))
        reconciler = Reconciler(svc, svc.records, svc.boots)
        fill(svc, n)
        await reconciler.run_once()  # the first pass after a start
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        event.listen(db.engine, "before_cursor_execute", count)
        clis, vault = CliSandboxes(settings, db, svc.sandboxes), Vault(db, svc.sandboxes.ring)
        c0 = time.process_time()
        for _ in range(ticks):
            await svc.records.record_pending()
            await svc.housekeeping.check_alive()
            await svc.housekeeping.expire_due()
            await svc.housekeeping.pool_tick()
            await clis.stop_idle()
            await clis.install_handed_over(vault)
        per_tick = (time.process_time() - c0) / ticks
        per_tick_statements = statements // ticks
        c0 = time.process_time()
        for _ in range(max(1, ticks // 5)):
            await reconciler.run_once()
        per_pass = (time.process_time() - c0) / max(1, ticks // 5)
        event.remove(db.engine, "before_cursor_execute", count)
        return per_tick, per_pass, per_tick_statements
    finally:
        db.dispose()


async def main(counts: list[int], ticks: int, server_url: str) -> None:
    print("userspace: none (no sandbox is booted: the controller's own housekeeping is measured)")
    for n in counts:
        with contextlib.ExitStack() as stack:
            env = dict(NETWORK)
            if server_url:  # a fresh database of its own on that server, dropped afterwards
                env["HEARTH_DATABASE_URL"] = stack.enter_context(fresh_database(server_url))
            settings = stack.enter_context(scratch_settings(env, "hearth-b"))
            store = "PostgreSQL" if settings.db_url.startswith("postgresql") else "SQLite"
            per_tick, per_pass, stmts = await measure(settings, n, ticks)
            share = per_tick / PERIOD + per_pass / settings.reconcile_interval
            print(
                f"{n:5d} idle sessions ({store}): {stmts} statements/tick, {per_tick * 1000:7.2f} ms CPU/tick, "
                f"reconciler {per_pass * 1000:7.1f} ms CPU/pass → controller housekeeping {share * 100:5.2f} % of a core"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default="10,1000", help="comma-separated session counts (each on a fresh store)")
    ap.add_argument("--ticks", type=int, default=20, help="housekeeping ticks measured per count")
    ap.add_argument(
        "--database-url",
        default="",
        help="a PostgreSQL server (its admin database URL): the store is a fresh database there",
    )
    args = ap.parse_args()
    asyncio.run(main([int(x) for x in args.sessions.split(",") if x], args.ticks, args.database_url))
