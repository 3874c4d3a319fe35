"""Where a request goes: the node holding a session (or a user's CLI sandbox), or a refusal naming the node."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from hearth.cluster.nodes import NodeView, list_nodes
from hearth.errors import HearthError, Hop
from hearth.store.models import CliSandboxRow, PromptRow, SessionRow
from hearth.store.nodestates import NodeState


class Unknown(Exception):
    """No such session (404 / close 4404)."""


class NodeDown(HearthError):
    """The session's node is down or unreachable (502 / close 4502, the reason names the node)."""

    def __init__(self, node_id: str, why: str) -> None:
        super().__init__(Hop.NODE, f"node {node_id} {why}", f"`hearth node list`; restart hearth on {node_id}")


class NodeSilent(HearthError):
    """The session's node is not marked down but does not answer (503 + Retry-After, naming the node)."""

    def __init__(self, node_id: str, seconds: float) -> None:
        super().__init__(
            Hop.NODE,
            f"node {node_id} did not respond within {seconds:.0f}s",
            f"retry shortly: if {node_id} is down it is marked so within HEARTH_NODE_DEAD_AFTER (`hearth node list`)",
        )


def stored_session(s: Db, session_id: str) -> SessionRow | None:
    """The session's row, as the store has it (what an edge answers for a node that is down)."""
    return s.get(SessionRow, session_id)


def route_session(s: Db, session_id: str) -> NodeView:
    """The node holding `session_id` (a draining node still serves its sessions); NodeDown when it is down."""
    node_id = s.scalar(select(SessionRow.node_id).where(SessionRow.id == session_id))
    if node_id is None:
        raise Unknown(session_id)
    return _live(s, node_id)


def route_prompt(s: Db, prompt_id: str) -> NodeView:
    """The node that runs `prompt_id` (its user's CLI sandbox's home node); NodeDown when it is down."""
    node_id = s.scalar(select(PromptRow.node_id).where(PromptRow.id == prompt_id))
    if node_id is None:
        raise Unknown(prompt_id)
    return _live(s, node_id)


def route_user(s: Db, user_id: str) -> NodeView:
    """The node holding `user_id`'s CLI sandbox, else any up node (users' routes: credentials, CLI sandbox)."""
    node_id = s.scalar(select(CliSandboxRow.node_id).where(CliSandboxRow.user_id == user_id))
    if node_id is not None:
        return _live(s, node_id)
    up = [n for n in list_nodes(s) if n.state is NodeState.UP]
    if not up:
        raise NodeDown("(any)", "— no node is up")
    return up[0]


def _live(s: Db, node_id: str) -> NodeView:
    node = next((n for n in list_nodes(s) if n.id == node_id), None)
    if node is None:
        raise NodeDown(node_id, "is not registered")
    if node.state is NodeState.DOWN:
        detail = (node.reason or "").removeprefix(f"[node] node {node_id} is down: ")
        raise NodeDown(node_id, f"is down: {detail or 'no heartbeat'}")
    return node
