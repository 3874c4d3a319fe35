"""The sandbox's verbs: `sb.target`, `sb.agent()`, `await sb.alive()`, `await sb.end()` — what callers use instead
of the manager's slot numbers and secrets (no namespaces, no processes: a recording driver)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import ClassVar

import pytest

from hearth.fabric.slot import slot_for
from hearth.lifecycle.sandbox import Final, Kind, Sandbox, SandboxState
from hearth.sandbox.base import Offers, SandboxInfo, SandboxSpec, StageMark
from hearth.store.models import OwnerKind


class Recorder:
    name: ClassVar[str] = "recorder"
    offers: ClassVar[Offers] = Offers()

    def __init__(self, alive: bool) -> None:
        self.running = alive
        self.asked: list[str] = []

    def console_tail(self, spec: SandboxSpec, limit: int) -> str:
        return ""

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        raise AssertionError("not started here")

    async def destroy(self, spec: SandboxSpec) -> None:
        raise AssertionError("not destroyed here")

    async def alive(self, spec: SandboxSpec) -> bool:
        self.asked.append(spec.session_id)
        return self.running


def _spec(tmp_path: Path, desktop: bool = True) -> SandboxSpec:
    net = IPv4Network("192.168.100.0/24")
    slot = slot_for("hearth-t0", net, IPv4Address("192.168.100.1"), IPv4Address("192.168.100.2"), 3)
    return SandboxSpec("s1", slot, tmp_path, "the-secret", agent_port=8123, rfb_port=5977, desktop=desktop)


def test_target_and_agent_name_the_sandbox_inside_the_fabric(tmp_path: Path) -> None:
    sb = Sandbox("s1", Kind.SESSION, _spec(tmp_path, desktop=False), netns="hearth-t0")
    t = sb.target
    assert (t.netns, t.ip, t.agent_port, t.rfb_port, t.desktop) == ("hearth-t0", "192.168.100.5", 8123, 5977, False)
    agent = sb.agent()
    assert (agent.netns, agent.ip, agent.port, agent.secret) == ("hearth-t0", "192.168.100.5", 8123, "the-secret")
    assert sb.owner_kind is OwnerKind.SESSION  # unless the manager says otherwise


async def test_alive_asks_its_driver_and_a_gone_or_driverless_sandbox_is_not(tmp_path: Path) -> None:
    driver = Recorder(alive=True)
    sb = Sandbox("s1", Kind.SESSION, _spec(tmp_path), driver=driver)
    assert await sb.alive() and driver.asked == ["s1"]
    driver.running = False
    assert not await sb.alive()
    assert not await Sandbox("s2", Kind.SESSION, _spec(tmp_path)).alive()  # no driver: nothing runs it
    sb.state = SandboxState.GONE
    driver.running = True
    assert not await sb.alive() and driver.asked == ["s1", "s1"]  # gone: not even asked


async def test_end_goes_through_the_manager_that_runs_it(tmp_path: Path) -> None:
    ended: list[tuple[str, Final]] = []

    async def ender(sb: Sandbox, final: Final) -> bool:
        ended.append((sb.owner, final))
        return final is Final.FAILED

    sb = Sandbox("s1", Kind.CLI, _spec(tmp_path), ender=ender)
    assert await sb.end() is False
    assert await sb.end(Final.FAILED) is True
    assert ended == [("s1", Final.DONE), ("s1", Final.FAILED)]
    with pytest.raises(RuntimeError, match="run by no manager"):
        await Sandbox("s2", Kind.SESSION, _spec(tmp_path)).end()


async def test_its_cleanup_stack_is_undone_once_and_a_second_closer_waits_for_the_first(tmp_path: Path) -> None:
    undone: list[str] = []
    release = asyncio.Event()

    async def destroy() -> None:
        await release.wait()
        undone.append("destroyed")

    sb = Sandbox("s1", Kind.SESSION, _spec(tmp_path))
    sb.cleanup.callback(undone.append, "lease released")  # pushed first: undone last
    sb.cleanup.push_async_callback(destroy)
    first, second = asyncio.ensure_future(sb.close()), asyncio.ensure_future(sb.close())
    await asyncio.sleep(0)
    assert undone == [] and not first.done() and not second.done()  # both wait for the processes to go
    release.set()
    await asyncio.gather(first, second)
    assert undone == ["destroyed", "lease released"]
    await sb.close()
    assert undone == ["destroyed", "lease released"]  # once
