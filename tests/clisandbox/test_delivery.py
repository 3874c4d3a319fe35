"""Delivered means usable, through a real controller and the user's CLI sandbox (its own agent): the provider's
credentials arrive with the settings its CLI needs (the example's `.example/settings.json` auth type, as Gemini
CLI's `security.auth.selectedType`), merged into the person's own settings file there — every other setting kept,
the person's mode and owner kept. A settings file that is not a JSON object fails the delivery naming the file and
the fix, before anything is written. On the netns driver (root) and the loopback driver (no root: the person's files
are the test user's own)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable

import pytest

from hearth.agentlink.client import AgentRefused
from hearth.config import Settings
from hearth.vault.store import CredentialFile
from tests.conftest import running_controller

pytestmark = [pytest.mark.slow]
CREDS = [CredentialFile(".example/credentials.json", 0o600, b'{"access_token": "ex-at-test"}')]


async def test_credentials_arrive_with_the_settings_merged_into_the_persons_own(
    driver_settings: Callable[..., Settings],
) -> None:
    settings = driver_settings(HEARTH_CHROMIUM="false")
    # the sandbox's user: the loopback driver's agent runs as this process's user
    uid, gid = (
        (os.getuid(), os.getgid()) if settings.driver == "loopback" else (settings.sandbox_uid, settings.sandbox_gid)
    )
    async with running_controller(settings) as ctl:
        clis = ctl.ctl.clis
        await clis.ensure("sam")
        home = clis.home_of("sam")
        mine = home / ".example"
        mine.mkdir(mode=0o700)
        own = mine / "settings.json"
        own.write_text(json.dumps({"theme": "dark", "auth": {"remember": True}}))
        own.chmod(0o640)
        for p in (mine, own):
            os.chown(p, uid, gid)

        installed = await clis.deliver("sam", CREDS)  # as a sign-in does: the provider known by its files
        assert installed == [".example/credentials.json", ".example/settings.json"]
        assert json.loads(own.read_text()) == {"theme": "dark", "auth": {"remember": True, "type": "oauth"}}
        assert stat.S_IMODE(own.stat().st_mode) == 0o640 and own.stat().st_uid == uid
        assert json.loads((mine / "credentials.json").read_text()) == {"access_token": "ex-at-test"}

        (mine / "credentials.json").unlink()
        own.write_text("[]")
        with pytest.raises(AgentRefused) as refused:
            await clis.deliver("sam", CREDS)
        assert refused.value.status == 400
        assert ".example/settings.json in the CLI sandbox is not a JSON object" in refused.value.detail
        assert "fix or remove that file" in refused.value.detail
        assert own.read_text() == "[]" and not (mine / "credentials.json").exists()  # nothing half-delivered
        assert await clis.delete("sam")
