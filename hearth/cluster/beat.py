"""A node's heartbeat loop (and the sweep every process runs): register, beat every HEARTH_NODE_HEARTBEAT, mark
silent nodes down. A node that finds it had been marked down asks for a reconciler pass at once: its sessions were
ended by someone else, so their sandboxes are now orphans to reclaim."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hearth import __version__
from hearth.cluster import nodes
from hearth.cluster.fence import Fence
from hearth.cluster.watch import Watch
from hearth.config import Settings
from hearth.errors import StoreError
from hearth.store.db import Database
from hearth.store.nodestates import NodeState
from hearth.webhooks.outbox import Outbox

log = logging.getLogger("hearth.cluster")
PROBE_TIMEOUT = 2.0  # a node about to fence itself tries the store once more, this long


def address(s: Settings) -> str:
    """Where edges reach this node (HEARTH_NODE_ADDRESS, else the API listen address)."""
    return s.node_address or f"http://{s.api_listen}"


def watch(s: Settings) -> Watch:
    """What a sweeper loop judges silence by (hearth/cluster/watch.py): sweeps come every heartbeat period; two
    answered sweeps further apart than half of dead-after (or two periods) may hide a store outage between them."""
    return Watch(s.node_dead_after, max(s.node_dead_after / 2, 2 * s.node_heartbeat))


async def run_node(
    s: Settings,
    db: Database,
    pool: int,
    drivers: tuple[str, ...],
    revived: Callable[[], None],
    fenced: Callable[[str | None], None] | None = None,
) -> None:
    """Beat until cancelled; `revived()` is called after a beat that found this node marked down (it is up again);
    `fenced(reason)` when this node fences itself, cut off from the cluster (None: the fence is lifted)."""
    reg = nodes.Registration(s.node_id, address(s), s.max_sessions_per_node or pool, pool, drivers, __version__)
    was: NodeState | None = None
    outbox = Outbox(s)  # sessions this beat's sweep ends get their `session.failed` webhook
    seen = watch(s)

    async def reaches_store() -> bool:
        try:
            await asyncio.wait_for(db.offload(db.probe), PROBE_TIMEOUT)
        except (StoreError, TimeoutError):
            return False
        return True

    fence = Fence(s, fenced or (lambda _reason: None), reaches_store=reaches_store)
    guard = asyncio.create_task(fence.run(), name="node-fence")

    def beat() -> tuple[NodeState | None, tuple[str, ...]]:
        state = nodes.heartbeat(db, reg)  # this node's own beat first: a sweeper that cannot write it judges no one
        nodes.sweep(db, s.node_dead_after, itself=s.node_id, outbox=outbox, watch=seen)
        return state, db.call(lambda x: nodes.peers(x, s.node_id))

    try:
        while True:
            try:
                # bounded: a beat hung on a dead link must not hold the loop (the store's own timeouts end it later)
                was, others = await asyncio.wait_for(db.offload(beat), s.node_dead_after)
                fence.answered(others)
                if was is NodeState.DOWN:
                    revived()
            except (StoreError, TimeoutError) as exc:
                seen.store_lost()
                why = exc.reason if isinstance(exc, StoreError) else f"no answer within {s.node_dead_after:.0f}s"
                log.warning("node heartbeat skipped: %s", why, extra={"node_id": s.node_id})
            except Exception:
                seen.store_lost()
                log.exception("node heartbeat failed", extra={"node_id": s.node_id, "state": str(was)})
            await asyncio.sleep(s.node_heartbeat)
    finally:
        guard.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await guard


async def run_sweeper(s: Settings, db: Database) -> None:
    """An edge's share of noticing dead nodes (every process sweeps; SKIP LOCKED keeps them out of each other's way).
    An edge judges only by what it watched over sweeps that reached the store (hearth/cluster/watch.py)."""
    outbox = Outbox(s)
    seen = watch(s)
    while True:
        try:
            await asyncio.wait_for(
                db.offload(lambda: nodes.sweep(db, s.node_dead_after, outbox=outbox, watch=seen)), s.node_dead_after
            )
        except (StoreError, TimeoutError) as exc:
            seen.store_lost()
            log.warning("node sweep skipped: %s", exc.reason if isinstance(exc, StoreError) else "no answer")
        except Exception:
            seen.store_lost()
            log.exception("node sweep failed")
        await asyncio.sleep(s.node_heartbeat)
