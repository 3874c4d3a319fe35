"""The loopback driver (hearth/sandbox/loopback.py): the real agent as a plain process on its slot's 127/8 address.
No root, no namespaces: these tests carry no `netns` marker and run as any user."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from hearth.agentlink.client import AgentClient, AgentRefused
from hearth.config import Settings, load_settings
from hearth.errors import ConfigError, DriverError
from hearth.sandbox.loopback import LoopbackDriver, sandbox_pids
from hearth.sandbox.select import choose_driver
from hearth_agent.contract import routes
from tests.sandbox.specs import spec_for


def marks(names: list[str]) -> Callable[[str], None]:
    return names.append


async def test_the_real_agent_answers_on_its_slot_address_and_everything_goes(
    loopback_settings: Callable[..., Settings],
) -> None:
    settings = loopback_settings()
    assert settings.dial_netns is None  # the controller dials from its own namespace: no fabric
    drv = choose_driver(settings).driver
    assert isinstance(drv, LoopbackDriver)
    specs = [spec_for(settings, i, desktop=False, chromium=False) for i in (0, 1)]
    stages: list[str] = []
    infos = await asyncio.gather(*(drv.start(spec, marks(stages)) for spec in specs))
    try:
        assert stages.count("process") == 2
        for spec, info in zip(specs, infos, strict=True):
            assert info.details["ip"] == str(spec.slot.ip)
            assert await drv.alive(spec)
            agent = AgentClient(settings.dial_netns, str(spec.slot.ip), spec.agent_port, spec.secret)
            health = await agent.call("GET", routes.HEALTH)
            assert health["ok"] is True and health["services"] == {}, health  # no desktop: the agent alone
            await agent.call("GET", routes.LOGIN)  # its own secret opens it: each its own agent, on its own address
            other = specs[1 - specs.index(spec)].secret
            with pytest.raises(AgentRefused) as refused:
                await AgentClient(None, str(spec.slot.ip), spec.agent_port, other).call("GET", routes.LOGIN)
            assert refused.value.status == 401
            assert info.pid in sandbox_pids(spec)
        # a controller restart forgets its children: the sandbox is found again from the spec alone
        adopter = LoopbackDriver(settings)
        assert await adopter.alive(specs[0])
        await adopter.destroy(specs[0])
        assert not await drv.alive(specs[0]) and not sandbox_pids(specs[0])
        assert not specs[0].workdir.exists()
        assert await drv.alive(specs[1])  # its neighbour untouched
    finally:
        for spec in specs:
            await drv.destroy(spec)
    assert not any(sandbox_pids(spec) for spec in specs)
    await drv.destroy(specs[1])  # idempotent


async def test_a_desktop_is_refused_before_anything_is_made(loopback_settings: Callable[..., Settings]) -> None:
    settings = loopback_settings()
    spec = spec_for(settings, 0, desktop=True)
    with pytest.raises(DriverError, match="without a desktop only"):
        await LoopbackDriver(settings).start(spec, lambda _s: None)
    assert not spec.workdir.exists()


def test_refused_without_the_explicit_setting_and_outside_loopback() -> None:
    base = {"HEARTH_DRIVER": "loopback", "INTERNAL_NETWORK": "127.100.0.0/22", "HEARTH_API_KEYS": "k"}
    with pytest.raises(ConfigError, match="HEARTH_ALLOW_UNISOLATED"):
        load_settings(base, env_file=None)
    with pytest.raises(ConfigError, match="loopback range"):
        load_settings(base | {"HEARTH_ALLOW_UNISOLATED": "1", "INTERNAL_NETWORK": "192.168.100.0/22"}, env_file=None)
    ok = load_settings(base | {"HEARTH_ALLOW_UNISOLATED": "1"}, env_file=None)
    assert ok.dial_netns is None
    assert load_settings({"HEARTH_API_KEYS": "k"}, env_file=None).dial_netns == "hearth"


async def test_an_agent_that_exits_at_start_is_named_and_everything_undone(
    loopback_settings: Callable[..., Settings],
) -> None:
    settings = loopback_settings()
    spec = spec_for(settings, 0, desktop=False)
    stages: list[str] = []
    with pytest.raises(DriverError, match="exited with 1 during start") as failed:
        await LoopbackDriver(settings, python="/bin/false").start(spec, stages.append)
    assert "step: process" in (failed.value.__notes__ or []), failed.value.__notes__
    assert stages == ["namespace"]  # the process stage never completed
    assert not spec.workdir.exists() and not sandbox_pids(spec)
