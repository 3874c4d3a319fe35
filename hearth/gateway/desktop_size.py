"""Who owns a desktop's size: the first control viewer that resizes it, until it leaves; then the default again.

noVNC asks for a desktop the size of its window (SetDesktopSize), so without an owner the desktop followed
whichever viewer connected last (a phone shrank it for the laptop too) and kept that size after the viewer left.
Now a session's size belongs to one viewer (`DesktopClaim`): the first control viewer whose SetDesktopSize the
gateway forwards. While it is connected, other control viewers' SetDesktopSize messages reach Xvnc as requests it
answers "prohibited" to them alone (hearth/gateway/viewonly.py; view-only viewers' are dropped). When the owner
leaves, the gateway dials the sandbox once more and asks Xvnc for the default size (HEARTH_SCREEN) — unless another
viewer has taken the size meanwhile — and the next control viewer may resize. Ownership lives in this controller's
memory, like the relays it belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from hearth.log import bind_session
from hearth.rfb.client import RfbError, handshake
from hearth.rfb.desktop import RESULTS, resize

log = logging.getLogger("hearth.gateway")

RESTORE_TIMEOUT = 15.0  # dial, handshake, layout and resize of one restore
Dial = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class DesktopClaim:
    """One viewer's standing towards its session's desktop size."""

    def __init__(self, sizes: DesktopSizes, session_id: str) -> None:
        self.sizes = sizes
        self.session_id = session_id

    def may_resize(self) -> bool:
        """Whether this viewer's SetDesktopSize may go through (it takes the size when nobody holds it)."""
        return self.sizes._take(self)

    @property
    def owns(self) -> bool:
        return self.sizes._owners.get(self.session_id) is self


class DesktopSizes:
    """Desktop-size owners of this controller's sessions, and the restores under way."""

    def __init__(self, default: tuple[int, int]) -> None:
        self.default = default
        self._owners: dict[str, DesktopClaim] = {}
        self._restores: dict[str, asyncio.Task[None]] = {}

    def claim(self, session_id: str) -> DesktopClaim:
        return DesktopClaim(self, session_id)

    def _take(self, claim: DesktopClaim) -> bool:
        owner = self._owners.setdefault(claim.session_id, claim)
        return owner is claim

    def release(
        self, claim: DesktopClaim, dial: Dial | None, gate: asyncio.Semaphore | None = None
    ) -> asyncio.Task[None] | None:
        """The viewer left. If it owned the size, the size is free again and — with `dial` (the sandbox is still
        there) — a restore to the default starts; returns that restore's task. `gate` is held from the dial to the
        end of the RFB handshake (the route's bound on dials in flight to the sandbox)."""
        if self._owners.get(claim.session_id) is not claim:
            return None
        del self._owners[claim.session_id]
        if dial is None:
            return None
        task = asyncio.create_task(self._restore(claim.session_id, dial, gate))
        self._restores[claim.session_id] = task
        task.add_done_callback(lambda t: self._done(claim.session_id, t))
        return task

    def _done(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._restores.get(session_id) is task:
            del self._restores[session_id]

    def restoring(self, session_id: str) -> asyncio.Task[None] | None:
        return self._restores.get(session_id)

    async def close(self) -> None:
        """Cancel restores still under way (the controller is stopping)."""
        tasks = list(self._restores.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    async def _restore(self, session_id: str, dial: Dial, gate: asyncio.Semaphore | None) -> None:
        width, height = self.default
        with bind_session(session_id):
            try:
                result = await asyncio.wait_for(self._resize(session_id, dial, gate), RESTORE_TIMEOUT)
            except (OSError, TimeoutError, RfbError, asyncio.IncompleteReadError) as exc:
                log.warning(
                    "desktop size not restored",
                    extra={"error": f"[vnc] {type(exc).__name__}: {exc}", "width": width, "height": height},
                )
                return
            if result is None:
                log.info("desktop size restore skipped: another viewer took the size")
            elif result:
                log.warning("desktop size not restored", extra={"error": f"[vnc] {RESULTS.get(result, result)}"})
            else:
                log.info("desktop size restored to the default", extra={"width": width, "height": height})

    async def _resize(self, session_id: str, dial: Dial, gate: asyncio.Semaphore | None) -> int | None:
        async with gate if gate is not None else contextlib.nullcontext():  # until the handshake is done
            reader, writer = await dial()

            async def write(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            try:
                await handshake(reader.readexactly, write)
            except BaseException:
                await _close(writer)
                raise
        try:
            return await resize(
                reader.readexactly, write, *self.default, proceed=lambda: session_id not in self._owners
            )
        finally:
            await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
