"""Placement: which node gets a new session. Pure choice over the nodes' rows (`choose`), and the store query
around it (`place`). The node's own admission (limits + lease + insert under the admission lock) stays the final
word: an edge that loses a race to a full node gets its 503 and places again without that node."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from hearth.cluster.nodes import NodeView, list_nodes
from hearth.errors import HearthError, Hop
from hearth.store.models import CliSandboxRow
from hearth.store.nodestates import NodeState


class NoNode(HearthError):
    """No live node has room (503 at the API, with the per-node reasons)."""

    def __init__(self, why: list[str]) -> None:
        detail = "; ".join(why) if why else "no node is registered"
        super().__init__(
            Hop.NODE,
            f"no node can take a new session: {detail}",
            "start a `hearth node`, undrain one (`hearth node undrain ID`) or wait for sessions to end",
        )


class ClusterFull(NoNode):
    """Every live node is at its capacity: 503 "cluster full: N sessions on M nodes" with Retry-After."""

    def __init__(self, sessions: int, nodes: int, why: list[str]) -> None:
        HearthError.__init__(
            self,
            Hop.NODE,
            f"cluster full: {sessions} sessions on {nodes} node{'s' if nodes != 1 else ''} ({'; '.join(why)})",
            "retry after Retry-After seconds (sessions end), or add capacity: another `hearth node`",
        )


def choose(nodes: Iterable[NodeView], affinity: str | None = None, exclude: frozenset[str] = frozenset()) -> NodeView:
    """The node for a new session: the `affinity` node (where the user's CLI sandbox lives) when it is up and has
    room, else the up node with the most room (ties: fewer active sessions, then id). NoNode names why each node
    was passed over."""
    why: list[str] = []
    fit: list[NodeView] = []
    seen = list(nodes)
    for n in seen:
        if n.id in exclude:
            why.append(f"{n.id} refused just now")
        elif n.state is not NodeState.UP:
            why.append(f"{n.id} is {n.state.value}")
        elif n.room <= 0:
            why.append(f"{n.id} is full ({n.active}/{n.capacity})")
        else:
            fit.append(n)
    if not fit:
        live = [n for n in seen if n.state is not NodeState.DOWN]
        if (
            live
            and all(n.room <= 0 for n in live if n.state is NodeState.UP)
            and any(n.state is NodeState.UP for n in live)
        ):
            raise ClusterFull(sum(n.active for n in live), len(live), why)
        raise NoNode(why)
    for n in fit:
        if n.id == affinity:
            return n
    return min(fit, key=lambda n: (-n.room, n.active, n.id))


def place(s: Db, user_id: str, exclude: frozenset[str] = frozenset()) -> NodeView:
    """Inside a transaction: the node for `user_id`'s new session."""
    affinity = s.scalar(select(CliSandboxRow.node_id).where(CliSandboxRow.user_id == user_id))
    return choose(list_nodes(s), affinity, exclude)
