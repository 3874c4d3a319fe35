"""HEARTH_POOL_SIZE=cli:1 end to end (real controller, real netns CLI sandboxes): a user's CLI sandbox is taken from
the warm pool with their home moved in (what was there is seen by its agent inside), personalised (the pool's
secret refused), the pool refills; the stop moves the home back and removes the pooled directory; the next user's
pooled sandbox holds nothing of the first's (on disk, and its agent cannot see it); delete leaves nothing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hearth.agentlink.client import http_json
from hearth.clisandbox.manager import mark_stopped
from hearth.config import Settings
from hearth.lifecycle.sandbox import Final, Kind
from hearth.session.pool import WarmPool
from hearth.store.models import CliSandboxRow
from hearth.vault.store import CredentialFile
from tests.conftest import Running, running_controller
from tests.live import descendants, leaks
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.sqlite_pass]


async def pooled(pool: WarmPool, timeout: float = 120) -> str:
    """Wait for a ready pooled CLI sandbox; its owner."""
    pool.refill()

    def ready() -> str:
        assert pool.ready("cli"), pool.summary()  # the last look, should it time out
        return pool.ready("cli")[0].owner

    return await eventually(ready, timeout, "a pooled CLI sandbox", interval=0.1)


def live_home(ctl: Running, user: str) -> Path:
    row = ctl.ctl.db.call(lambda d: d.get(CliSandboxRow, user))
    assert row is not None
    return Path(row.home)


async def test_cli_sandboxes_from_the_warm_pool(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_POOL_SIZE="cli:1", HEARTH_CHROMIUM="false")
    before = await asyncio.to_thread(descendants)
    async with running_controller(settings) as ctl:
        clis, pool, mgr = ctl.ctl.clis, ctl.ctl.service.pool, ctl.ctl.service.sandboxes
        users = settings.data_dir / "users"
        # ana already has a home (an earlier sandbox): it must reach the pooled one
        ana = clis.home_of("ana")
        (ana / ".tool").mkdir(parents=True)
        (ana / ".tool" / "old.json").write_text("ana's earlier file")
        for p in (ana, ana / ".tool", ana / ".tool" / "old.json"):  # as an earlier sandbox of hers left them
            os.chown(p, settings.sandbox_uid, settings.sandbox_gid)
        first = await pooled(pool)
        pool_sb = mgr.get(first)
        assert pool_sb is not None
        pool_ip, pool_secret = str(pool_sb.spec.slot.ip), pool_sb.secret

        assert await clis.deliver("ana", [CredentialFile(".tool/a.json", 0o600, b"ana")]) == [".tool/a.json"]
        assert pool.hits == 1
        home = live_home(ctl, "ana")
        assert home == users / first / "home"  # the pooled sandbox's own directory
        assert sorted(os.listdir(home / ".tool")) == ["a.json", "old.json"] and os.listdir(ana) == []
        owner = await clis.owner_of("ana")
        assert owner is not None and mgr.get(owner) is not None and str(mgr.get(owner).spec.slot.ip) == pool_ip  # type: ignore[union-attr]
        s = ctl.settings
        status, _ = await http_json(s.fabric_netns, pool_ip, s.agent_port, "GET", "/v1/login", 5, None, pool_secret)
        assert status == 401  # personalised: the pool's secret is refused from now on
        # the agent inside sees the moved-in file (it removes it through its own view of the home)
        (home / ".tool" / "gone.json").write_text("x")
        assert await clis.remove("ana", [".tool/gone.json"]) == [".tool/gone.json"]

        # stop: the home goes back, the pooled directory goes
        await clis.stop("ana")
        assert live_home(ctl, "ana") == ana and not (users / first).exists()
        assert sorted(os.listdir(ana / ".tool")) == ["a.json", "old.json"]

        # the next user's pooled sandbox holds nothing of ana's
        second = await pooled(pool)
        assert second != first
        assert await clis.deliver("bob", [CredentialFile(".tool/b.json", 0o600, b"bob")]) == [".tool/b.json"]
        assert pool.hits == 2
        bob = live_home(ctl, "bob")
        assert bob == users / second / "home"
        assert sorted(os.listdir(bob)) == [".tool"] and os.listdir(bob / ".tool") == ["b.json"]
        assert await clis.remove("bob", [".tool/a.json", ".tool/old.json"]) == []  # nor does its agent see it

        # ana again: a pooled sandbox if one is ready, with her whole home (her file seen from inside)
        await pooled(pool)
        assert await clis.remove("ana", [".tool/old.json"]) == [".tool/old.json"]
        assert pool.hits == 3 and live_home(ctl, "ana") != ana

        # a stop a crash cut short (its processes gone, its home not moved back yet): the next stop settles it
        bob_owner = await clis.owner_of("bob")
        assert bob_owner is not None
        await mgr.end(bob_owner, Final.DONE, None, Kind.CLI)
        ctl.ctl.db.call(lambda d: mark_stopped(d, bob_owner))
        assert live_home(ctl, "bob") == users / second / "home"
        await clis.stop("bob")
        assert live_home(ctl, "bob") == clis.home_of("bob") and not (users / second).exists()
        assert (clis.home_of("bob") / ".tool" / "b.json").read_bytes() == b"bob"

        # delete (and the retention path, which deletes): the home goes back first, then all of it goes
        assert await clis.delete("ana") and await clis.delete("bob")
        assert not ana.parent.exists() and not clis.home_of("bob").parent.exists()
        await pool.drain()
        assert sorted(os.listdir(users)) == []  # no pooled directory left behind
        left = await leaks(ctl, before)
        assert left.total == 0, left
