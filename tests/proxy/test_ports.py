"""Each user's egress proxy port: one for life, unique, assigned atomically — 100 concurrent first requests (the
same user from many callers, and many users at once, through two Database objects as two nodes sharing the store)
never collide, on SQLite and (TEST_DATABASE_URL) PostgreSQL; the range running out is a clear error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from hearth.config import Settings
from hearth.config.proxy import parse_ports
from hearth.errors import Hop
from hearth.proxy.ports import PortsExhausted, assign_sync
from hearth.store.db import Database
from hearth.store.models import EgressPortRow


@pytest.fixture
def two_nodes(make_settings: Callable[..., Settings]) -> Iterator[tuple[Database, Database]]:
    s = make_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    a = Database(s.db_url, s.data_dir)
    b = Database(s.db_url, s.data_dir)
    yield a, b
    a.dispose()
    b.dispose()


def rows(db: Database) -> dict[str, int]:
    return db.call(lambda s: {r.user_id: r.port for r in s.scalars(select(EgressPortRow))})


def test_100_concurrent_first_requests_for_different_users_never_collide(two_nodes: tuple[Database, Database]) -> None:
    a, b = two_nodes
    ranges = parse_ports("10001-10150")
    users = [f"user-{i}" for i in range(100)]
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda i: assign_sync((a, b)[i % 2], users[i], ranges, f"n{i % 2}"), range(100)))
    ports = [g.port for g in got]
    assert len(set(ports)) == 100 and all(10001 <= p <= 10150 for p in ports)
    assert rows(a) == {g.user_id: g.port for g in got}
    again = [assign_sync(b, u, ranges) for u in users]  # for life: the same port, not new
    assert [g.port for g in again] == ports and not any(g.new for g in again)


def test_100_concurrent_first_requests_for_one_user_get_one_port(two_nodes: tuple[Database, Database]) -> None:
    a, b = two_nodes
    ranges = parse_ports("10001-19999")
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda i: assign_sync((a, b)[i % 2], "alice", ranges), range(100)))
    assert len({g.port for g in got}) == 1 and sum(g.new for g in got) == 1
    assert rows(a) == {"alice": got[0].port}


def test_a_full_range_is_a_clear_error_and_existing_users_keep_theirs(two_nodes: tuple[Database, Database]) -> None:
    a, _ = two_nodes
    ranges = parse_ports("20001-20003,20010")
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: assign_sync(a, f"u{i}", ranges), range(4)))
    assert sorted(g.port for g in got) == [20001, 20002, 20003, 20010]
    with pytest.raises(PortsExhausted) as caught:
        assign_sync(a, "late", ranges)
    assert caught.value.hop is Hop.PROXY and "HEARTH_EGRESS_PROXY_PORTS" in caught.value.reason
    assert assign_sync(a, "u2", ranges).port == got[2].port
