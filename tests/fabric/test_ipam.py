"""IPAM: database-enforced uniqueness, concurrency safety, exhaustion, release."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from hearth.config import Settings, load_settings
from hearth.errors import PoolExhausted
from hearth.fabric.ipam import Ipam
from hearth.store.db import Database


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
