"""`hearth.edge.routing.route_prompt`: a prompt's requests go to the node that runs it, a down node is named."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hearth.config import Settings
from hearth.edge.routing import NodeDown, Unknown, route_prompt
from hearth.store.db import Database
from hearth.store.models import NodeRow, PromptRow


def test_a_prompt_routes_to_its_node(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    db = Database(settings.db_url, settings.data_dir)
    try:

        def seed(s: object) -> None:
            for nid, state in (("n1", "up"), ("n2", "up"), ("n3", "down")):
                s.add(NodeRow(id=nid, address=f"http://{nid}:4000", state=state))  # type: ignore[attr-defined]
            for pid, nid in (("p2", "n2"), ("p3", "n3")):
                s.add(  # type: ignore[attr-defined]
                    PromptRow(
                        id=pid, user_id="u", provider="example", node_id=nid, status="running",
                        permissions="read_only", timeout=5.0, usage={}, timings={}, truncated=False,
                        last_seq=0, answer_bytes=0,
                    )
                )  # fmt: skip

        db.call(seed)
        assert db.call(lambda s: route_prompt(s, "p2")).id == "n2"
        with pytest.raises(NodeDown, match="n3"):
            db.call(lambda s: route_prompt(s, "p3"))
        with pytest.raises(Unknown):
            db.call(lambda s: route_prompt(s, "nope"))
    finally:
        db.dispose()
