"""Credential versions (issue 23): every sign-in is a new version and active again; a CLI's refresh pushed back is
re-sealed as version + 1 with refreshed_at — unless a newer version was sealed meanwhile (a sign-in during the
prompt), then it is dropped: the newest wins. needs_signin is set for the version the CLI used only."""

from __future__ import annotations

from collections.abc import Callable

from hearth.config import Settings
from hearth.store.db import Database
from hearth.vault.keys import KeyRing
from hearth.vault.store import CredentialFile, Vault


def files(token: str) -> list[CredentialFile]:
    return [CredentialFile(".example/credentials.json", 0o600, f'{{"t": "{token}"}}'.encode())]


async def test_versions_never_go_backwards(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    db = Database(settings.db_url, settings.data_dir)
    vault = Vault(db, KeyRing.load("", settings.data_dir / "vault.keys"))
    try:
        m1 = await vault.put("ana", "example", files("signin-1"), None)
        assert (m1.version, m1.status, m1.refreshed_at) == (1, "active", None)
        m2 = await vault.refreshed("ana", "example", files("refreshed-1"), base_version=1)
        assert m2 is not None and m2.version == 2 and m2.refreshed_at is not None and m2.delivered_at is not None
        # a prompt that started on version 2; a sign-in completes meanwhile (version 3); the CLI's refresh of 2
        m3 = await vault.put("ana", "example", files("signin-2"), None)
        assert m3.version == 3
        assert await vault.refreshed("ana", "example", files("stale"), base_version=2) is None
        opened = await vault.open_versioned("ana", "example")
        assert opened is not None and opened[0][0].data == files("signin-2")[0].data and opened[1].version == 3
        # the CLI says its sign-in is unusable: for the version it used only
        await vault.set_status("ana", "example", 2, "needs_signin", "revoked")
        assert (await vault.list("ana"))[0].status == "active"
        await vault.set_status("ana", "example", 3, "needs_signin", "credential revoked: sign in again")
        meta = (await vault.list("ana"))[0]
        assert (meta.status, meta.status_reason) == ("needs_signin", "credential revoked: sign in again")
        assert meta.last_used_at is not None
        renewed = await vault.put("ana", "example", files("signin-3"), None)
        assert (renewed.version, renewed.status, renewed.status_reason) == (4, "active", None)
        assert await vault.refreshed("bob", "example", files("x"), base_version=1) is None  # nothing sealed
    finally:
        db.dispose()
