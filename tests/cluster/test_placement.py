"""Placement: free capacity, affinity to the user's CLI sandbox, drained / down / full nodes skipped with reasons.
Pure choice over node views, then the same through the real store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from hearth.cluster import nodes
from hearth.cluster.nodes import NodeView
from hearth.cluster.placement import NoNode, choose, place
from hearth.config import Settings
from hearth.store.db import Database
from hearth.store.models import CliSandboxRow, SessionRow
from hearth.store.nodestates import NodeState


def node(i: str, active: int = 0, capacity: int = 4, state: NodeState = NodeState.UP) -> NodeView:
    return NodeView(
        i, f"http://{i}", state, capacity, capacity - active, active, ("netns",), "0.1.0", None, datetime.now(UTC)
    )


def test_most_room_wins_ties_by_fewer_active_then_id() -> None:
    assert choose([node("a", 2), node("b", 1), node("c", 3)]).id == "b"
    assert choose([node("b", 1, capacity=8), node("a", 0, capacity=4)]).id == "b"  # 7 free beats 4
    assert choose([node("b"), node("a")]).id == "a"


def test_affinity_when_it_has_room_else_spread() -> None:
    nodes_ = [node("a", 0), node("b", 3)]
    assert choose(nodes_, affinity="b").id == "b"
    assert choose([node("a", 0), node("b", 4)], affinity="b").id == "a"  # full: placed elsewhere
    assert choose([node("a"), node("b", state=NodeState.DRAINING)], affinity="b").id == "a"


def test_no_node_names_why_each_was_passed_over() -> None:
    with pytest.raises(NoNode) as caught:
        choose(
            [node("a", 4), node("b", state=NodeState.DRAINING), node("c", state=NodeState.DOWN), node("d")],
            exclude=frozenset({"d"}),
        )
    msg = caught.value.reason
    assert "a is full (4/4)" in msg and "b is draining" in msg and "c is down" in msg and "d refused" in msg
    with pytest.raises(NoNode, match="no node is registered"):
        choose([])


def test_place_through_the_store_spreads_and_follows_the_cli_sandbox(make_settings: Callable[..., Settings]) -> None:
    db = Database(make_settings().db_url)
    try:
        for name in ("h0", "h1", "h2"):
            nodes.heartbeat(db, nodes.Registration(name, f"http://{name}", 4, 4, ("netns",), "0.1.0"))
        picked = []
        for i in range(6):
            n = db.call(lambda s, i=i: place(s, f"user{i}"))  # type: ignore[misc]
            picked.append(n.id)
            db.call(
                lambda s, n=n, i=i: s.add(  # type: ignore[misc]
                    SessionRow(id=f"s{i}", node_id=n.id, user_id=f"user{i}", status="ready", driver="netns", fabric="f")
                )
            )
        assert sorted(picked) == ["h0", "h0", "h1", "h1", "h2", "h2"]  # spread evenly
        db.call(lambda s: s.add(CliSandboxRow(user_id="alice", node_id="h2", owner_id="cli-1", home="/x")))
        assert db.call(lambda s: place(s, "alice")).id == "h2"
        nodes.set_state(db, "h2", NodeState.DRAINING)
        assert db.call(lambda s: place(s, "alice")).id in ("h0", "h1")
    finally:
        db.dispose()
