"""The `sandboxes` table's one writer (hearth/lifecycle/rows.py) and the owner kind column: a warm-pool claim is one
transaction that gives the row and the lease to the new owner (id and kind) with its new sealed secret; a sandbox
taken first (a claim elsewhere, or retired) is skipped. The store only: no sandbox runs here."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest
from sqlalchemy import select

from hearth.config import Settings
from hearth.fabric.ipam import Ipam
from hearth.lifecycle.rows import SandboxRows
from hearth.lifecycle.sandbox import Kind, Sandbox, SandboxState
from hearth.sandbox.base import SandboxSpec
from hearth.store.db import Database
from hearth.store.models import LeaseRow, OwnerKind, SandboxRow, SessionRow
from hearth.vault.keys import KeyRing, MasterKey


@dataclass
class Store:
    settings: Settings
    db: Database
    ipam: Ipam
    rows: SandboxRows


@pytest.fixture
async def store(make_settings: Callable[..., Settings]) -> AsyncIterator[Store]:
    s = make_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(s.db_url, s.data_dir)
    yield Store(s, db, Ipam(s, db), SandboxRows(s, db, KeyRing([MasterKey.of(secrets.token_bytes(32))], None)))
    db.dispose()


async def _pooled(st: Store, owner: str) -> Sandbox:
    lease = await st.ipam.acquire(owner, OwnerKind.POOL)
    spec = SandboxSpec(owner, lease.slot, st.settings.data_dir / owner, "pool-secret", desktop=False)
    sb = Sandbox(owner, Kind.SESSION, spec, SandboxState.POOLED, owner_kind=OwnerKind.POOL)
    await st.rows.save(sb, "netns")
    return sb


def _session(sid: str, fabric: str) -> SessionRow:
    return SessionRow(id=sid, user_id="u", status="starting", driver="netns", fabric=fabric)


async def test_leases_and_rows_carry_their_owner_kind(store: Store) -> None:
    await _pooled(store, "pool-a")
    await store.ipam.acquire("cli-b", OwnerKind.CLI)
    await store.ipam.acquire("s-c")
    assert {lease.session_id: lease.kind for lease in await store.ipam.leases()} == {
        "pool-a": OwnerKind.POOL,
        "cli-b": OwnerKind.CLI,
        "s-c": OwnerKind.SESSION,
    }
    [row] = await store.rows.stored()
    assert (row.owner_id, row.owner_kind, row.state) == ("pool-a", OwnerKind.POOL, "pooled")
    assert store.rows.unseal(row) == "pool-secret"


async def test_a_claim_hands_row_and_lease_to_the_session_with_its_new_secret(store: Store) -> None:
    taken, free = await _pooled(store, "pool-taken"), await _pooled(store, "pool-free")
    assert await store.rows.retire(taken.owner)  # ended meanwhile: no longer pooled
    assert not await store.rows.retire(taken.owner)  # and only once
    fabric = store.settings.fabric_netns
    await store.db.run(lambda db: db.add(_session("sid-1", fabric)))
    await store.ipam.acquire("sid-1")  # admission leased a slot of its own: given up for the pooled one's

    sealed = store.rows.seal("sid-1", "new-secret")
    assert await store.rows.claim([taken.owner, free.owner], "sid-1", OwnerKind.SESSION, sealed) == free.owner

    row = await store.db.run(lambda db: db.get(SandboxRow, "sid-1"))
    assert row is not None and row.owner_kind is OwnerKind.SESSION and row.state == "running"
    assert store.rows.unseal(row) == "new-secret"
    leases = {lease.session_id: lease for lease in await store.ipam.leases()}
    assert set(leases) == {"pool-taken", "sid-1"} and leases["sid-1"].kind is OwnerKind.SESSION
    assert leases["sid-1"].slot == free.spec.slot
    session = await store.db.run(lambda db: db.get(SessionRow, "sid-1"))
    assert session is not None and (session.slot, session.sandbox_ip) == (
        free.spec.slot.index,
        str(free.spec.slot.ip),
    )
    # nothing left to claim: a miss
    again = store.rows.seal("sid-2", "x")
    assert await store.rows.claim([taken.owner, free.owner], "sid-2", OwnerKind.SESSION, again) is None
    assert await store.rows.claim([], "sid-2", OwnerKind.SESSION, again) is None


async def test_a_cli_claim_makes_a_cli_owner(store: Store) -> None:
    pooled = await _pooled(store, "pool-cli")
    sealed = store.rows.seal("cli-owner", "s")
    assert await store.rows.claim([pooled.owner], "cli-owner", OwnerKind.CLI, sealed) == pooled.owner
    kinds = await store.db.run(
        lambda db: (
            db.scalar(select(SandboxRow.owner_kind).where(SandboxRow.owner_id == "cli-owner")),
            db.scalar(select(LeaseRow.owner_kind).where(LeaseRow.session_id == "cli-owner")),
        )
    )
    assert kinds == (OwnerKind.CLI, OwnerKind.CLI)
    assert IPv4Address((await store.ipam.leases())[0].slot.ip) == pooled.spec.slot.ip
