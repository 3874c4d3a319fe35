"""Open TCP connections from inside a network namespace without moving the controller into it.

A socket belongs to the namespace it was created in. We create it on a short-lived thread that has joined the
namespace (setns affects only the calling thread, and the thread ends right after), then connect it from the event
loop. So the controller reaches 192.168.100.x inside the fabric while the root namespace never routes it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")
_P = TypeVar("_P", bound=asyncio.Protocol)


def _run_in_netns(path: Path, fn: Callable[[], T], box: dict[str, Any]) -> None:
    """On a thread of its own: join the namespace at `path`, run `fn`, put its result or error into `box`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        box["err"] = exc
        return
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            box["err"] = OSError(err, f"setns({path}): {os.strerror(err)}")
            return
        box["ok"] = fn()
    except BaseException as exc:
        box["err"] = exc
    finally:
        os.close(fd)


def _unbox(box: dict[str, Any]) -> Any:
    if "err" in box:
        raise box["err"]
    return box["ok"]


def call_in_netns(netns: str | None, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run `fn()` on a short-lived thread that joined namespace `netns` (None: the caller's own namespace).

    setns(2) affects only the calling thread, and that thread ends right after, so nothing else ever runs in the
    wrong namespace. Sockets, netlink handles and /proc/sys/net files opened by `fn` belong to `netns`.
    """
    if netns is None:
        return fn()
    box: dict[str, Any] = {}
    t = threading.Thread(
        target=_run_in_netns, args=(NETNS_RUN_DIR / netns, fn, box), name=f"netns-{netns}", daemon=True
    )
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"work inside namespace {netns} did not finish within {timeout:.0f}s")
    result: T = _unbox(box)
    return result


async def acall_in_netns(netns: str | None, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """`call_in_netns` for the event loop without any shared thread pool: the namespace thread itself hands the
    result back, so fabric dials never queue behind database work (or anything else) in the default executor."""
    if netns is None:
        return fn()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    box: dict[str, Any] = {}

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def work() -> None:
        _run_in_netns(NETNS_RUN_DIR / netns, fn, box)
        loop.call_soon_threadsafe(finish)

    threading.Thread(target=work, name=f"netns-{netns}", daemon=True).start()
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise TimeoutError(f"work inside namespace {netns} did not finish within {timeout:.0f}s") from None
    result: T = _unbox(box)
    return result


def socket_in_netns(
    netns: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A new socket created in namespace `netns` (None: the caller's own namespace)."""
    return call_in_netns(netns, lambda: socket.socket(family, kind, proto))


async def connect(netns: str | None, host: str, port: int, timeout: float) -> socket.socket:
    """A connected, non-blocking TCP socket to host:port from inside `netns`. Raises OSError / TimeoutError."""
    sock = await acall_in_netns(netns, socket.socket, timeout)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(
    netns: str | None, host: str, port: int, timeout: float, limit: int = 2**20
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over a TCP connection opened from inside `netns`."""
    sock = await connect(netns, host, port, timeout)
    try:
        return await asyncio.wait_for(asyncio.open_connection(sock=sock, limit=limit), timeout)
    except BaseException:
        sock.close()
        raise


async def open_protocol(netns: str | None, host: str, port: int, timeout: float, factory: Callable[[], _P]) -> _P:
    """`factory()`'s protocol over a TCP connection opened from inside `netns`."""
    sock = await connect(netns, host, port, timeout)
    try:
        _, protocol = await asyncio.wait_for(asyncio.get_running_loop().create_connection(factory, sock=sock), timeout)
    except BaseException:
        sock.close()
        raise
    return protocol
