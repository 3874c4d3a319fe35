"""`hearth sandbox plan` plans the very spec a controller boots (hearth/sandbox/specs.py, the manager's builder)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from hearth.cli import sandbox as sandbox_cli
from hearth.cli.main import app
from hearth.cli.sandbox import plan_spec
from hearth.config import Settings, load_settings
from hearth.errors import DriverError, Hop
from hearth.sandbox.base import Offers, SandboxInfo, SandboxSpec, StageMark
from hearth.store.db import Database
from tests.session.servicekit import session_service
from tests.waits import eventually

SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


class RecordingDriver:
    """Records the spec the controller's boot hands it, then refuses to start (nothing is created)."""

    name: ClassVar[str] = "recording"
    offers: ClassVar[Offers] = Offers()

    def __init__(self) -> None:
        self.started: list[SandboxSpec] = []

    def console_tail(self, spec: SandboxSpec, limit: int) -> str:
        return ""

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        self.started.append(spec)
        raise DriverError(Hop.DRIVER, "recorded (test driver)", "none")

    async def destroy(self, spec: SandboxSpec) -> None:
        return None

    async def alive(self, spec: SandboxSpec) -> bool:
        return False


def first_certificate() -> str:
    """One CA of the system's bundle (HEARTH_EXTRA_CA_CERTS takes a few CAs, not a whole bundle)."""
    text = SYSTEM_CAS.read_text()
    end = "-----END CERTIFICATE-----"
    return text[text.index("-----BEGIN CERTIFICATE-----") : text.index(end) + len(end)] + "\n"


def environ_with_everything(tmp_path: Path) -> dict[str, str]:
    """Settings that touch every field of a spec the old plan command left at its defaults."""
    ca = tmp_path / "ca.pem"
    ca.write_text(first_certificate())
    return {
        "HEARTH_DATA_DIR": str(tmp_path / "data"),
        "HEARTH_SCREEN": "1024x768x24",
        "HEARTH_START_URL": "https://example.test/start",
        "HEARTH_BROWSER_START": "queued",
        "HEARTH_VNC_SERVER": "x11vnc",
        "HEARTH_EXTRA_CA_CERTS": str(ca),
        "HEARTH_EGRESS_ALLOW": "10.20.0.0/16",
    }


async def booted_spec(settings: Settings) -> SandboxSpec:
    """The spec a controller's session boot hands its driver (the session service → the sandbox manager)."""
    driver = RecordingDriver()
    db = Database(settings.db_url, settings.data_dir)
    try:
        svc = session_service(settings, db, driver)
        view = await svc.start("user-1", None)

        async def boot_over() -> bool:
            return bool(driver.started) and not svc.boots.is_booting(view.id)

        await eventually(boot_over, 10, "the boot handed its spec to the driver")
    finally:
        db.dispose()
    assert len(driver.started) == 1
    return driver.started[0]


@pytest.mark.skipif(not SYSTEM_CAS.is_file(), reason="needs the system CA bundle (ca-certificates)")
async def test_the_plan_spec_is_the_one_a_controller_boots(tmp_path: Path) -> None:
    settings = load_settings(environ_with_everything(tmp_path), env_file=None)
    settings.data_dir.mkdir(parents=True)
    booted = await booted_spec(settings)
    planned = plan_spec(settings, booted.slot.index, session_id=booted.session_id)
    assert planned.secret and planned.secret != booted.secret  # each its own, never printed
    assert dataclasses.replace(planned, secret=booted.secret) == booted
    # what the old plan command left out is there
    assert planned.extra_ca.startswith("-----BEGIN CERTIFICATE-----") and planned.egress_allow == ("10.20.0.0/16",)
    assert planned.browser_on_request and planned.vnc_server == "x11vnc" and planned.screen == "1024x768x24"


@pytest.mark.skipif(not SYSTEM_CAS.is_file(), reason="needs the system CA bundle (ca-certificates)")
def test_the_plan_command_plans_that_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in environ_with_everything(tmp_path).items():
        monkeypatch.setenv(key, value)
    planned: list[SandboxSpec] = []

    def recorded(settings: Settings, slot_index: int, session_id: str | None = None) -> SandboxSpec:
        planned.append(plan_spec(settings, slot_index, session_id))
        return planned[-1]

    monkeypatch.setattr(sandbox_cli, "plan_spec", recorded)
    result = CliRunner().invoke(app, ["sandbox", "plan", "--json", "--slot", "3"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    [spec] = planned
    assert doc["session_id"] == spec.session_id and doc["slot"] == 3 and doc["guest_ip"] == str(spec.slot.ip)
    assert doc["workdir"] == str(spec.workdir)
    assert spec.secret not in result.output  # the secret goes only into the config drive
