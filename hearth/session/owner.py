"""A node acts only on what it owns: a session's `node_id` must be this node's (HEARTH_NODE_ID).

Sessions of every node share one store, so any node can read any session's row; none may act on another node's. A
call for a session of another node is refused — HTTP 421 (Misdirected Request) with the ErrorOut body naming the
owning node and its address (`node`: its id), the viewer WebSocket closes with 4421 — and each refusal is logged with
the session id, the owning node and this node. Edges route every call to the owning node (hearth/edge/routing.py),
so only a caller that reached the wrong node directly ever sees this.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from hearth.errors import HearthError, Hop, StoreError
from hearth.store.db import Database
from hearth.store.models import NodeRow

log = logging.getLogger("hearth.session")


class NotHere(HearthError):
    """The session lives on another node (HTTP 421, viewer close 4421)."""

    def __init__(self, session_id: str, node_id: str, address: str | None) -> None:
        where = address or "its address is not registered: `hearth node list`"
        super().__init__(
            Hop.NODE, f"session {session_id} lives on node {node_id}; call that node ({where}) or go through an edge"
        )
        self.session_id = session_id
        self.node_id = node_id
        self.address = address

    @property
    def short(self) -> str:
        """The same, without the session id (a WebSocket close reason holds 123 bytes; the URL names the session)."""
        return f"[node] this session lives on node {self.node_id} ({self.address or 'address unknown'}); connect there"


def address_of(db: Db, node_id: str) -> str | None:
    """The registered address of `node_id` (None when it never registered)."""
    return db.scalar(select(NodeRow.address).where(NodeRow.id == node_id))


async def refuse(db: Database, here: str, session_id: str, owner: str, what: str) -> NotHere:
    """Log the refusal of `what` (a route, the viewer) for another node's session; the error to answer with."""
    try:
        address = await db.run(lambda s: address_of(s, owner))
    except StoreError:
        address = None  # the refusal stands without it
    log.warning(
        "refused: the session lives on another node",
        extra={"session_id": session_id, "owner_node": owner, "this_node": here, "refused": what},
    )
    return NotHere(session_id, owner, address)
