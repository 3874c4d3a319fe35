"""Readiness by notification in the namespace driver: the agent tells the driver on a pipe that its API listens
(`--notify-fd`), so a start does not poll the port with back-off. Real namespaces, processes and sockets."""

from __future__ import annotations

import asyncio
import os

import pytest

from hearth.config import Settings
from hearth.guest import packages as guestpkg
from hearth.lifecycle import readiness
from hearth.sandbox.listening import notified as _notified
from hearth.sandbox.netns import NetnsDriver
from tests.sandbox.specs import spec_for
from tests.sandbox.test_netns import health, leftovers
from tests.waits import eventually


async def test_notified_reads_listening_and_tells_eof_apart() -> None:
    r, w = os.pipe()
    os.write(w, b"listen")  # a line in pieces

    def rest() -> None:
        os.write(w, b"ing\n")
        os.close(w)

    writer = asyncio.get_running_loop().call_later(0.01, rest)
    assert await _notified(r, 30) is True
    writer.cancel()
    r, w = os.pipe()
    os.close(w)  # the agent exited before listening
    assert await _notified(r, 30) is False
    r, w = os.pipe()
    try:
        assert await _notified(r, 0.05) is False  # nothing said: the caller falls back to polling
    finally:
        os.close(w)
    with pytest.raises(OSError):
        os.fstat(r)  # closed by _notified in every case


@pytest.mark.netns
async def test_a_start_is_told_by_the_agent_without_polling(
    fabric_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_polling(*_args: object, **_kw: object) -> None:
        raise AssertionError("the driver polled the agent's port instead of being told")

    monkeypatch.setattr(readiness, "wait_listening", no_polling)
    s = fabric_settings
    spec = spec_for(s, 5, desktop=False, chromium=False)
    try:
        await NetnsDriver(s).start(spec, lambda _: None)  # returns once told: wait_listening would fail it
        body = await eventually(lambda: health(s, spec), 10, "agent health")
        assert body["ok"]
    finally:
        await NetnsDriver(s).destroy(spec)
    assert await asyncio.to_thread(leftovers, s, spec) == []


@pytest.mark.netns
async def test_an_agent_that_dies_before_listening_still_fails_fast_with_its_log(
    fabric_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EOF on the pipe without `listening`: the driver's polling wait names the exit and the log, as before."""
    s = fabric_settings
    spec = spec_for(s, 6, desktop=False, chromium=False)
    monkeypatch.setattr(guestpkg, "GUEST_PYTHON", "/bin/false")
    try:
        with pytest.raises(Exception) as err:
            await NetnsDriver(s).start(spec, lambda _: None)
        assert "exited with 1" in str(err.value)
    finally:
        await NetnsDriver(s).destroy(spec)
