"""The API client against the Firecracker stand-in (a real HTTP server on a Unix socket, in a real subprocess).

The stand-in (fake_firecracker.py) replaces the firecracker binary, which cannot exist on this machine; it answers
per Firecracker's OpenAPI spec: 204 / 200, or 400 with `{"fault_message": ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.errors import DriverError, Hop
from hearth.sandbox.firecracker.api import ApiUnreachable, FirecrackerApi
from hearth.sandbox.firecracker.plan import ApiCall
from tests.sandbox.firecracker.fchelpers import FAKE
from tests.waits import eventually


@contextlib.asynccontextmanager
async def stand_in(tmp_path: Path, *knobs: str) -> AsyncIterator[tuple[Path, asyncio.subprocess.Process]]:
    sock = tmp_path / "fc.sock"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE), "--api-sock", str(sock), *knobs, stdout=asyncio.subprocess.DEVNULL
    )
    try:

        async def opened() -> bool:
            if proc.returncode is not None:
                raise RuntimeError("stand-in exited")  # not one of NOT_YET: fails at once
            return sock.exists()

        await eventually(opened, 10, "the stand-in's socket", interval=0.01)
        yield sock, proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_valid_calls_succeed(tmp_path: Path) -> None:
    log = tmp_path / "fc.log"
    log.touch()
    async with stand_in(tmp_path) as (sock, _), FirecrackerApi(sock) as api:
        assert await api.version() == "0.0.0-fake"
        r = await api.call(ApiCall("PUT", "/logger", {"log_path": str(log), "level": "Info"}))
        assert r.status_code == 204
        r = await api.call(ApiCall("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 2048, "smt": False}))
        assert r.status_code == 204


async def test_refusal_carries_firecrackers_fault_message_and_a_hint(tmp_path: Path) -> None:
    msg = "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled."
    async with stand_in(tmp_path, "--fake-fail", "PUT", "/machine-config", msg) as (sock, _):
        async with FirecrackerApi(sock) as api:
            with pytest.raises(DriverError) as err:
                await api.call(ApiCall("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 2048}))
    e = err.value
    assert e.hop is Hop.DRIVER and not isinstance(e, ApiUnreachable)
    assert msg in e.message and "PUT /machine-config" in e.message and "HTTP 400" in e.message
    assert "HEARTH_VM_VCPUS" in e.hint


async def test_spec_invalid_body_is_refused_by_the_stand_in(tmp_path: Path) -> None:
    """The seed's 0.5 vCPU: the stand-in refuses it like Firecracker (400), and the client reports why."""
    async with stand_in(tmp_path) as (sock, _), FirecrackerApi(sock) as api:
        with pytest.raises(DriverError, match="not of type 'integer'"):
            await api.request("PUT", "/machine-config", {"vcpu_count": 0.5, "mem_size_mib": 2048})
        with pytest.raises(DriverError, match="no such path"):
            await api.request("PUT", "/machine", {"vcpu_count": 1, "mem_size_mib": 2048})
        with pytest.raises(DriverError, match="Cannot start microvm without kernel configuration"):
            await api.request("PUT", "/actions", {"action_type": "InstanceStart"})


async def test_missing_socket_is_unreachable(tmp_path: Path) -> None:
    async with FirecrackerApi(tmp_path / "nope.sock") as api:
        with pytest.raises(ApiUnreachable, match="cannot talk to"):
            await api.version()


async def test_stale_socket_file_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: what a crashed VMM leaves behind
    async with FirecrackerApi(path) as api:
        with pytest.raises(ApiUnreachable):
            await api.version()


async def test_every_call_has_a_timeout(tmp_path: Path) -> None:
    async with stand_in(tmp_path, "--fake-stall", "PUT", "/logger") as (sock, _):
        async with FirecrackerApi(sock, timeout=0.3) as api:
            t0 = time.monotonic()
            with pytest.raises(ApiUnreachable, match=r"no answer within 0\.3s"):
                await api.request("PUT", "/logger", {"log_path": "/dev/null"})
            print(f"gave up after {time.monotonic() - t0:.2f}s")


async def test_process_dying_mid_call_is_a_driver_error(tmp_path: Path) -> None:
    async with stand_in(tmp_path, "--fake-exit-on", "PUT", "/boot-source") as (sock, proc):
        async with FirecrackerApi(sock) as api:
            with pytest.raises(ApiUnreachable):
                await api.request("PUT", "/boot-source", {"kernel_image_path": "/x"})
        assert await proc.wait() == 1
