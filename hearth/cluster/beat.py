"""A node's heartbeat loop (and the sweep every process runs): register, beat every HEARTH_NODE_HEARTBEAT, mark
silent nodes down. A node that finds it had been marked down asks for a reconciler pass at once: its sessions were
ended by someone else, so their sandboxes are now orphans to reclaim."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hearth import __version__
from hearth.cluster import nodes
from hearth.cluster.states import NodeState
from hearth.config import Settings
from hearth.errors import StoreError
from hearth.store.db import Database
from hearth.webhooks.outbox import Outbox

log = logging.getLogger("hearth.cluster")


def address(s: Settings) -> str:
    """Where edges reach this node (HEARTH_NODE_ADDRESS, else the API listen address)."""
    return s.node_address or f"http://{s.api_listen}"


async def run_node(
    s: Settings,
    db: Database,
    pool: int,
    drivers: tuple[str, ...],
    revived: Callable[[], None],
) -> None:
    """Beat until cancelled; `revived()` is called after a beat that found this node marked down (it is up again)."""
    reg = nodes.Registration(s.node_id, address(s), s.max_sessions_per_node or pool, pool, drivers, __version__)
    was: NodeState | None = None
    outbox = Outbox(s)  # sessions this beat's sweep ends get their `session.failed` webhook
    while True:
        try:
            was = await db.offload(lambda: nodes.heartbeat(db, reg))
            if was is NodeState.DOWN:
                revived()
            await db.offload(lambda: nodes.sweep(db, s.node_dead_after, itself=s.node_id, outbox=outbox))
        except StoreError as exc:
            log.warning("node heartbeat skipped: %s", exc.reason, extra={"node_id": s.node_id})
        except Exception:
            log.exception("node heartbeat failed", extra={"node_id": s.node_id, "state": str(was)})
        await asyncio.sleep(s.node_heartbeat)


async def run_sweeper(s: Settings, db: Database) -> None:
    """An edge's share of noticing dead nodes (every process sweeps; SKIP LOCKED keeps them out of each other's way)."""
    outbox = Outbox(s)
    while True:
        try:
            await db.offload(lambda: nodes.sweep(db, s.node_dead_after, outbox=outbox))
        except StoreError as exc:
            log.warning("node sweep skipped: %s", exc.reason)
        except Exception:
            log.exception("node sweep failed")
        await asyncio.sleep(s.node_heartbeat)
