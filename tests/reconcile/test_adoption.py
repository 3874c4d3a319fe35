"""Adoption after a restart, with bad input: the reconciler of a controller that does not (yet) run three live
sandboxes — as after a restart — meets one whose agent answers with another secret than the stored one, one whose
processes are gone (a row with no sandbox), a session with no sandbox row at all, a sandbox row with no session, and
a sandbox directory with no row. Each is reconciled with a logged reason; a live sandbox with the right secret is
adopted; a foreign namespace and a foreign directory are not touched.

The restart is played in-process by dropping the controller's memory of its sandboxes (`forget_all`): the sandboxes,
rows and leases are exactly what a restarted controller finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.lifecycle.rows import AAD_PURPOSE
from hearth.lifecycle.sandbox import Final, Kind
from hearth.reconcile.reconciler import Reconciler
from hearth.sandbox.procs import pids_in_netns
from hearth.store.models import CliSandboxRow, SandboxRow
from hearth.vault.seal import seal
from hearth.vault.store import CredentialFile
from tests.conftest import running_controller
from tests.live import start_ready

pytestmark = [pytest.mark.netns, pytest.mark.slow]


async def test_bad_input_is_reconciled_with_reasons(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_RECONCILE_INTERVAL="3600")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        svc = ctl.ctl.service
        mgr = svc.sandboxes
        good, wrong, dead, norow = [await start_ready(http, settings, f"u{i}") for i in range(4)]
        ring = mgr.ring

        mgr.forget_all()  # the restart: the sandboxes, rows and leases stay
        # The agent of `wrong` will be asked with a secret it never had.
        sealed = seal(ring, b"not-the-agent-secret", f"sandbox:{wrong.session_id}", AAD_PURPOSE)

        def reseal(db: object) -> None:
            row = db.get(SandboxRow, wrong.session_id)  # type: ignore[attr-defined]
            row.key_id, row.nonce, row.ciphertext = sealed.key_id, sealed.nonce, sealed.ciphertext

        await svc.db.run(reseal)
        # `dead`: its row stays, its processes are gone.
        await mgr.destroy_slot(dead.session_id, dead.slot)
        # `norow`: the session is live in the store, but no sandbox row records it.
        await svc.db.run(lambda db: db.delete(db.get(SandboxRow, norow.session_id)))
        # A sandbox row with no session row (its slot unused), a directory with no row, foreign things.
        ghost_slot, dir_slot = settings.pool_size - 2, settings.pool_size - 3
        await svc.db.run(
            lambda db: db.add(
                SandboxRow(
                    owner_id="ghost",
                    kind="session",
                    state="running",
                    fabric=settings.fabric_netns,
                    slot=ghost_slot,
                    driver="netns",
                    desktop=True,
                    key_id=sealed.key_id,
                    nonce=sealed.nonce,
                    ciphertext=sealed.ciphertext,
                )
            )
        )
        stray = settings.data_dir / "sandboxes" / f"{settings.fabric_netns}-s{dir_slot}"
        stray.mkdir(parents=True)
        (stray / "left.txt").write_text("x")
        foreign_dir = settings.data_dir / "sandboxes" / "not-hearth"
        foreign_dir.mkdir()
        foreign_ns = f"{settings.fabric_netns}-x9"
        netlink.create_netns(foreign_ns)
        try:
            report = await Reconciler(svc, svc.records, svc.boots).run_once()

            assert report.adopted_sessions == [good.session_id]
            assert mgr.secret_of(good.session_id)
            assert (await http.get(f"/api/auth/session/{good.session_id}")).json()["status"] == "ready"

            for live, why in (
                (wrong, "refused the stored secret"),
                (dead, "its processes are gone"),
                (norow, "no sandbox is recorded for this session"),
            ):
                body = (await http.get(f"/api/auth/session/{live.session_id}")).json()
                assert body["status"] == "failed" and why in body["reason"], body
                assert body["reason"].startswith("[driver]"), body
                assert not netlink.netns_exists(live.netns)
                assert not pids_in_netns(live.netns)
                assert any(why in r.getMessage() for r in caplog.records), why
            assert report.removed_sandboxes["ghost"] == "no session row"
            assert any("no session row" in r.getMessage() for r in caplog.records)
            assert dir_slot in report.reclaimed and not stray.exists()
            assert foreign_dir.is_dir() and netlink.netns_exists(foreign_ns)
            rows = await svc.db.run(lambda db: sorted(r.owner_id for r in db.query(SandboxRow).all()))
            assert rows == [good.session_id]
        finally:
            netlink.remove_netns(foreign_ns)
        await http.post(f"/api/auth/session/{good.session_id}/cancel")


async def test_a_cli_sandbox_is_adopted_with_its_home(make_settings: Callable[..., Settings]) -> None:
    """A running CLI sandbox outlives the controller too: adopted by its stored secret, then used as it is (same
    launcher, same home) — not restarted."""
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_RECONCILE_INTERVAL="3600")
    async with running_controller(settings) as ctl:
        clis, mgr = ctl.ctl.clis, ctl.ctl.service.sandboxes
        await clis.deliver("carol", [CredentialFile(".tool/a.json", 0o600, b"{}")])
        row = await ctl.ctl.db.run(lambda db: db.get(CliSandboxRow, "carol"))
        assert row is not None and row.state == "running"
        before = mgr.get(row.owner_id)
        assert before is not None

        mgr.forget_all()  # the restart
        report = await Reconciler(ctl.ctl.service, ctl.ctl.service.records, ctl.ctl.service.boots).run_once()
        assert report.adopted_cli == [row.owner_id]
        after = mgr.get(row.owner_id)
        assert after is not None and after.pid == before.pid and after.secret == before.secret
        assert after.spec.home == clis.home_of("carol")

        await clis.deliver("carol", [CredentialFile(".tool/b.json", 0o600, b"{}")])  # through the adopted agent
        assert mgr.get(row.owner_id) is after, "used as it is, not restarted"
        assert (clis.home_of("carol") / ".tool" / "b.json").exists()
        assert await clis.delete("carol")


async def test_a_pass_during_a_boot_leaves_that_sandbox_and_its_lease_alone(
    make_settings: Callable[..., Settings],
) -> None:
    """A sandbox the manager is booting under a lease no session row explains yet (as a teardown's or a direct boot's
    may be) is this controller's own: a reconciler pass in the middle of the boot neither releases its lease nor
    reclaims its namespace (it once did, and the agent then found no namespace to enter)."""
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_RECONCILE_INTERVAL="3600")
    async with running_controller(settings) as ctl:
        svc = ctl.ctl.service
        mgr = svc.sandboxes
        lease = await mgr.ipam.acquire("boot-in-progress")
        boot = asyncio.create_task(mgr.boot("boot-in-progress", Kind.SESSION, lease.slot))
        try:
            for _ in range(1000):  # until its namespace exists: the boot is under way
                if netlink.netns_exists(lease.slot.netns) or boot.done():
                    break
                await asyncio.sleep(0.005)
            assert mgr.is_booting("boot-in-progress"), "the boot ended before the pass could run during it"
            report = await Reconciler(svc, svc.records, svc.boots).run_once()
            assert "boot-in-progress" not in report.released_leases and not report.reclaimed, report
            sb = await asyncio.wait_for(boot, 60)
            assert netlink.netns_exists(sb.spec.slot.netns)
        finally:
            if not boot.done():
                boot.cancel()
            with contextlib.suppress(BaseException):
                await boot
            await mgr.end("boot-in-progress", Final.DONE, lease.slot.index, Kind.SESSION)
