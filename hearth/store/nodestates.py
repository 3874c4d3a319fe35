"""Node states and their explicit transition table, beside the store's NodeRow (the cluster writes them, session
admission reads them)."""

from __future__ import annotations

from enum import StrEnum


class NodeState(StrEnum):
    UP = "up"  # heartbeating, takes new sessions
    DRAINING = "draining"  # heartbeating, live sessions finish, nothing new placed
    DOWN = "down"  # missed its heartbeats: its sessions were ended, nothing placed until it beats again


TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.UP: frozenset({NodeState.DRAINING, NodeState.DOWN}),
    NodeState.DRAINING: frozenset({NodeState.UP, NodeState.DOWN}),
    NodeState.DOWN: frozenset({NodeState.UP}),  # only by its own heartbeat (register)
}


def allowed(current: NodeState, target: NodeState) -> bool:
    return current is target or target in TRANSITIONS[current]
