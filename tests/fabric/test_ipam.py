"""IPAM: database-enforced uniqueness, concurrency safety, exhaustion, release."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import event

from hearth.config import Settings, load_settings
from hearth.errors import PoolExhausted
from hearth.fabric.ipam import Ipam
from hearth.store.db import Database
from hearth.store.models import LeaseRow


def settings(tmp_path: Path, start: str = "192.168.100.2", end: str = "192.168.100.254") -> Settings:
    return load_settings({"HEARTH_DATA_DIR": str(tmp_path), "IP_POOL_START": start, "IP_POOL_END": end}, env_file=None)


def test_lowest_free_slot_and_derived_names(tmp_path: Path) -> None:
    s = settings(tmp_path)
    ipam = Ipam(s, Database(s.db_url))
    a = ipam.acquire_sync("a")
    b = ipam.acquire_sync("b")
    assert (a.slot.index, str(a.slot.ip)) == (0, "192.168.100.2")
    assert (b.slot.index, str(b.slot.ip)) == (1, "192.168.100.3")
    assert a.slot.netns == "hearth-s0" and a.slot.veth_host == "hearth-v0" and a.slot.tap_name == "hearth-t0"
    assert ipam.acquire_sync("a") == a  # idempotent per owner


async def test_release_frees_the_address(tmp_path: Path) -> None:
    s = settings(tmp_path)
    ipam = Ipam(s, Database(s.db_url))
    first = await ipam.acquire("a")
    await ipam.acquire("b")
    await ipam.release("a")
    await ipam.release("a")  # releasing nothing is fine
    again = await ipam.acquire("c")
    assert again.slot.index == first.slot.index
    assert [lease.session_id for lease in await ipam.leases()] == ["c", "b"]


async def test_exhaustion_raises_with_reason(tmp_path: Path) -> None:
    s = settings(tmp_path, "192.168.100.10", "192.168.100.12")
    ipam = Ipam(s, Database(s.db_url))
    for i in range(3):
        await ipam.acquire(f"s{i}")
    with pytest.raises(PoolExhausted) as info:
        await ipam.acquire("one-too-many")
    assert "all 3 addresses are leased" in info.value.reason
    assert info.value.hop.value == "fabric"
    assert len(await ipam.leases()) == 3


def test_no_double_allocation_across_threads_and_engines(tmp_path: Path) -> None:
    """Eight threads, each with its own engine (like separate processes), race for 40 leases in a 40-address pool."""
    s = settings(tmp_path, "192.168.100.10", "192.168.100.49")
    Database(s.db_url)  # create tables once
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        ipam = Ipam(s, Database(s.db_url))
        for i in range(5):
            try:
                lease = ipam.acquire_sync(f"w{w}-{i}")
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                results.append(str(lease.slot.ip))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 40
    assert len(set(results)) == 40
    with pytest.raises(PoolExhausted):
        Ipam(s, Database(s.db_url)).acquire_sync("late")


async def test_concurrent_async_acquires(tmp_path: Path) -> None:
    s = settings(tmp_path)
    ipam = Ipam(s, Database(s.db_url))
    leases = await asyncio.gather(*(ipam.acquire(f"s{i}") for i in range(30)))
    assert len({lease.slot.ip for lease in leases}) == 30


def _counting(db: Database) -> list[str]:
    """The SQL statements `db` runs from now on (to show a take costs the same whatever the number of leases)."""
    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: seen.append(str(a[2]).split()[0].upper()))
    return seen


def test_a_node_sized_pool_fills_lowest_first_with_constant_statements(tmp_path: Path, database_url: str) -> None:
    """The default /22 (1,021 addresses) and a /21 (2,045, from INTERNAL_NETWORK alone): every take is the same
    few statements whether 2 or 1,000 slots are leased, fills holes lowest first and reaches the last address."""
    env = {"HEARTH_DATA_DIR": str(tmp_path), "INTERNAL_NETWORK": "10.20.0.0/21"}
    if database_url:
        env["HEARTH_DATABASE_URL"] = database_url
    s = load_settings(env, env_file=None)
    assert (s.pool_size, str(s.bridge_ip), str(s.ip_pool_end)) == (2045, "10.20.0.1", "10.20.7.254")
    db = Database(s.db_url)
    ipam = Ipam(s, db)
    db.call(  # 1,999 leases at once: slots 0..1998 except 7 and 1500
        lambda session: session.add_all(
            LeaseRow(node_id=s.node_id, fabric=s.fabric_netns, slot=i, ip=str(ipam.slot(i).ip), session_id=f"p{i}")
            for i in range(1999)
            if i not in (7, 1500)
        )
    )
    seen = _counting(db)
    assert ipam.acquire_sync("x").slot.index == 7
    per_take = list(seen)
    seen.clear()
    assert ipam.acquire_sync("y").slot.index == 1500
    assert seen == per_take  # the same statements with a hole high up: nothing per lease
    late = [ipam.acquire_sync(f"z{i}") for i in range(2045 - 1999)]
    assert str(late[-1].slot.ip) == "10.20.7.254" and late[-1].slot.index == 2044
    assert late[-1].slot.netns == "hearth-s2044" and late[-1].slot.veth_host == "hearth-v2044"
    with pytest.raises(PoolExhausted):
        ipam.acquire_sync("one-too-many")


def test_leases_beyond_a_shrunk_pool_do_not_hide_its_free_slots(tmp_path: Path, database_url: str) -> None:
    """A lease left on slot 9 after the pool shrank to 5 addresses: the free slots 1..4 are still handed out."""
    s = settings(tmp_path, "192.168.100.2", "192.168.100.6")
    if database_url:
        s = s.model_copy(update={"database_url": database_url})
    db = Database(s.db_url)
    ipam = Ipam(s, db)
    db.call(
        lambda session: session.add_all(
            LeaseRow(node_id=s.node_id, fabric=s.fabric_netns, slot=i, ip=f"192.168.100.{2 + i}", session_id=f"p{i}")
            for i in (0, 9)
        )
    )
    assert [ipam.acquire_sync(f"n{i}").slot.index for i in range(4)] == [1, 2, 3, 4]
    with pytest.raises(PoolExhausted):
        ipam.acquire_sync("full")
