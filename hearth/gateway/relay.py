"""WebSocket ↔ RFB TCP relay.

First the gateway completes the RFB handshake with the sandbox and, separately, with the viewer
(hearth/gateway/handshake.py), so the viewer's messages are framed from a known boundary whatever version it chose.
The viewer's side up to its ClientInit is a `Greeting` (hearth/gateway/greeting.py), under way since the route knew
the session has a desktop. Its outcome is looked at only where the viewer's handshake used to start: every close code
and reason stays what it was.
Then the relay *splices* the two connections: each viewer message is filtered and written to the sandbox from the
WebSocket's own `data_received` (hearth/gateway/websocket.py), and each chunk from the VNC server is framed and
written to the viewer from the sandbox socket's `data_received` (hearth/rfb/stream.py) — no task,
queue or await per message. Backpressure crosses over (a side that cannot take more holds the other's reading), so
nothing is dropped or buffered without bound. The outcome says who ended the relay so the route can send the right
close code (1000 on sandbox EOF, never a silent drop).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from starlette.websockets import WebSocket, WebSocketDisconnect

from hearth.gateway.greeting import Greeting, Viewer, ViewerGone
from hearth.gateway.handshake import ViewerHandshakeError
from hearth.gateway.rfbspec import XVNC, ServerProfile
from hearth.gateway.viewonly import Forbidden, InputFilter
from hearth.gateway.websocket import SPLICE, Splice
from hearth.rfb.client import RfbError, ServerInit, handshake
from hearth.rfb.stream import SandboxStream

REPORT_EVERY = 1.0  # seconds between byte-counter reports
WRITE_STALL = 30.0  # seconds the VNC server may take no input before the relay gives up on it
HANDSHAKE_TIMEOUT = 30.0  # each side's RFB handshake
RESIZE_POLL = 0.002  # seconds between looks at whether a SetDesktopSize can go out alone


class Ended(StrEnum):
    SANDBOX_EOF = "sandbox_eof"
    SANDBOX_ERROR = "sandbox_error"
    CLIENT_GONE = "client_gone"
    STOPPED = "stopped"
    BAD_VIEWER = "bad_viewer"  # the viewer's RFB handshake was not RFB
    FORBIDDEN = "forbidden"  # the viewer sent a message the gateway does not forward (hearth/gateway/viewonly.py)


@dataclass
class RelayStats:
    to_client: int = 0
    to_sandbox: int = 0
    dropped_input: int = 0


@dataclass(frozen=True)
class Outcome:
    ended: Ended
    detail: str
    stats: RelayStats


async def relay(
    ws: WebSocket,
    sandbox: SandboxStream,
    stop: asyncio.Event,
    view_only: bool = False,
    on_first_frame: Callable[[], None] | None = None,
    on_bytes: Callable[[str, int], None] | None = None,
    on_sandbox_handshake: Callable[[], None] | None = None,
    server: ServerProfile = XVNC,
    on_frame_seen: Callable[[], None] | None = None,
    may_resize: Callable[[], bool] | None = None,
    greeting: Greeting | None = None,
    sandbox_init: ServerInit | None = None,
) -> Outcome:
    """Relay until one side ends or `stop` is set; returns who ended it. `on_sandbox_handshake` is called once the
    sandbox's RFB handshake is done (the route serialises dials to one sandbox until then). The viewer's messages
    are filtered for `server` (hearth/gateway/viewonly.py); `may_resize` says whether its SetDesktopSize goes through
    (hearth/gateway/desktop_size.py). `greeting`: the viewer's handshake the route already started (else it starts
    here, beside the sandbox's); it is cancelled if the relay ends before it is done. `sandbox_init`: the sandbox's
    handshake is already done (hearth/gateway/predial.py), this its ServerInit. `on_first_frame`: the first update
    began to reach the viewer; `on_frame_seen`: the viewer has it whole (it asked for the next one, or left)."""
    filt = InputFilter(drop_input=view_only, server=server, may_resize=may_resize)
    greeting = greeting or Greeting(ws)
    try:
        return await _relay(
            ws,
            sandbox,
            stop,
            filt,
            (on_first_frame, on_frame_seen),
            on_bytes,
            on_sandbox_handshake,
            greeting,
            sandbox_init,
        )
    finally:
        await greeting.cancel()
        await sandbox.close()


async def _handshakes(
    sandbox: SandboxStream,
    greeting: Greeting,
    stats: RelayStats,
    on_sandbox_handshake: Callable[[], None] | None,
    done: ServerInit | None,
) -> Outcome | None:
    """Both sides' RFB handshakes (the sandbox's unless `done`: its ServerInit); None when done, else why the relay
    ends before it began."""
    try:
        init = (
            done
            if done is not None
            else await asyncio.wait_for(handshake(sandbox.readexactly, sandbox.write), HANDSHAKE_TIMEOUT)
        )
    except (RfbError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        detail = f"RFB handshake with the sandbox failed: {type(exc).__name__} {exc}"
        return Outcome(Ended.SANDBOX_ERROR, detail, stats)
    if on_sandbox_handshake is not None:
        on_sandbox_handshake()
    try:
        await greeting.finish(init.raw, HANDSHAKE_TIMEOUT)
    except ViewerHandshakeError as exc:
        return Outcome(Ended.BAD_VIEWER, str(exc), stats)
    except TimeoutError:
        return Outcome(Ended.BAD_VIEWER, f"no RFB handshake from the viewer within {HANDSHAKE_TIMEOUT:.0f}s", stats)
    except (ViewerGone, WebSocketDisconnect, RuntimeError):
        return Outcome(Ended.CLIENT_GONE, "viewer disconnected during the RFB handshake", stats)
    return None


async def _relay(
    ws: WebSocket,
    sandbox: SandboxStream,
    stop: asyncio.Event,
    filt: InputFilter,
    on_frames: tuple[Callable[[], None] | None, Callable[[], None] | None],
    on_bytes: Callable[[str, int], None] | None,
    on_sandbox_handshake: Callable[[], None] | None,
    greeting: Greeting,
    sandbox_init: ServerInit | None,
) -> Outcome:
    stats = RelayStats()
    viewer = greeting.viewer
    splice: Splice | None = ws.scope.get("extensions", {}).get(SPLICE)
    if splice is None:
        raise RuntimeError(f"the gateway needs a server that offers {SPLICE} (hearth.gateway.websocket)")

    setup = asyncio.create_task(_handshakes(sandbox, greeting, stats, on_sandbox_handshake, sandbox_init))
    ended = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((setup, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (setup, ended):
            t.cancel()
        for t in (setup, ended):
            with contextlib.suppress(BaseException):
                await t
    if setup.cancelled():  # the session ended while the handshakes were under way
        return Outcome(Ended.STOPPED, "session ended", stats)
    early = setup.result()  # (re-raises anything unexpected)
    if early is not None:
        return early
    try:
        return await _spliced(ws, splice, sandbox, viewer, stop, filt, on_frames, on_bytes, stats)
    finally:
        splice.unsplice()


async def _spliced(
    ws: WebSocket,
    splice: Splice,
    sandbox: SandboxStream,
    viewer: Viewer,
    stop: asyncio.Event,
    filt: InputFilter,
    on_frames: tuple[Callable[[], None] | None, Callable[[], None] | None],
    on_bytes: Callable[[str, int], None] | None,
    stats: RelayStats,
) -> Outcome:
    """Both handshakes are done: relay from the two connections' callbacks until one side ends."""
    loop = asyncio.get_running_loop()
    first_frame, frame_seen = ([f] if f is not None else [] for f in on_frames)
    began = [-1]  # the viewer's update requests when the first update began to reach it (-1: not yet)
    done: asyncio.Future[Outcome] = loop.create_future()
    stall: list[asyncio.TimerHandle] = []
    # Forwarded bytes waiting behind a SetDesktopSize that must start a TCP segment of its own (viewonly.py):
    # (bytes, starts with a resize). The viewer's reading is held while they wait.
    held: deque[tuple[bytes, bool]] = deque()
    holding: set[str] = set()  # why the viewer's reading is held: "server" (takes no input), "resize"
    poll: list[asyncio.TimerHandle] = []
    waiting_since = [0.0]
    ending: list[Outcome] = []  # a refused message: the relay ends once what came before it has left
    flushed = asyncio.Event()  # nothing held (set whenever `held` empties)
    flushed.set()

    def finish(outcome: Outcome) -> None:
        if not done.done():
            done.set_result(outcome)

    def failed(exc: Exception) -> None:  # a bug in a callback: the relay re-raises it rather than lose it
        if not done.done():
            done.set_exception(exc)

    def to_viewer(data: bytes) -> None:
        if done.done():
            return
        try:
            splice.send_now(data)
            stats.to_client += len(data)
            if began[0] < 0 and filt.saw_update_request:
                began[0] = filt.update_requests
                if first_frame:
                    first_frame.pop()()
        except Exception as exc:
            failed(exc)

    def seen() -> None:
        try:
            frame_seen.pop()()
        except Exception as exc:
            failed(exc)

    def hold_viewer(why: str, on: bool) -> None:
        (holding.add if on else holding.discard)(why)
        splice.hold(bool(holding))

    def pump() -> None:
        """Write what is held, in order; a piece starting with a SetDesktopSize only once everything before it has
        left (then it starts a TCP segment: TigerVNC 1.12 misreads a SetDesktopSize whose header arrives split)."""
        while held:
            piece, alone = held[0]
            if alone and not sandbox.drained():
                if not poll:
                    if "resize" not in holding:
                        waiting_since[0] = loop.time()
                        hold_viewer("resize", True)
                    poll.append(loop.call_later(RESIZE_POLL, retry))
                return
            held.popleft()
            sandbox.send_now(piece)
            stats.to_sandbox += len(piece)
        hold_viewer("resize", False)
        flushed.set()
        if ending:  # a refused message waited for what the viewer sent before it to leave
            finish(ending[0])

    def retry() -> None:
        poll.clear()
        if done.done():
            return
        if sandbox.closing:
            return finish(Outcome(Ended.SANDBOX_EOF, "the sandbox closed the VNC connection", stats))
        if loop.time() - waiting_since[0] > WRITE_STALL:
            why = f"writing to sandbox failed: TimeoutError (the VNC server took no input for {WRITE_STALL:.0f}s)"
            return finish(Outcome(Ended.SANDBOX_ERROR, why, stats))
        pump()

    def forward(kept: bytes) -> None:
        """`kept` to the VNC server, in order after what is held; `filt.resizes` (its SetDesktopSize offsets) each
        wait to start a segment of their own."""
        if not filt.resizes and not held:  # the usual case: straight on
            sandbox.send_now(kept)
            stats.to_sandbox += len(kept)
            return
        starts = set(filt.resizes)
        for a, b in itertools.pairwise(sorted({0, len(kept), *starts})):
            held.append((kept[a:b], a in starts))
        flushed.clear()
        pump()

    def to_sandbox(data: bytes) -> None:
        if done.done() or ending:
            return
        try:
            kept = filt.feed(data)
        except Forbidden as exc:
            # The messages before the refused one still go, in order, whatever the chunking; the relay ends once
            # they have left (at once, unless a SetDesktopSize among them waits for its own segment).
            ending.append(Outcome(Ended.FORBIDDEN, str(exc), stats))
            if exc.kept and not sandbox.closing:
                forward(exc.kept)
            if not held:
                finish(ending[0])
            return
        except Exception as exc:
            return failed(exc)
        stats.dropped_input += len(data) - len(kept)
        if frame_seen and 0 <= began[0] < filt.update_requests:  # it asks for the next update: it has the first
            seen()
        if not kept:
            return
        if sandbox.closing:  # the VNC server closed this connection
            return finish(Outcome(Ended.SANDBOX_EOF, "the sandbox closed the VNC connection", stats))
        forward(kept)

    def sandbox_writable(writable: bool) -> None:
        """The VNC server stopped (False) or resumed taking input: hold the viewer's reading meanwhile."""
        hold_viewer("server", not writable)
        while stall:
            stall.pop().cancel()
        if not writable:
            why = f"writing to sandbox failed: TimeoutError (the VNC server took no input for {WRITE_STALL:.0f}s)"
            stall.append(loop.call_later(WRITE_STALL, finish, Outcome(Ended.SANDBOX_ERROR, why, stats)))

    def viewer_writable(writable: bool) -> None:
        """The viewer stopped (False) or resumed taking output: hold the sandbox's reading meanwhile."""
        sandbox.hold(not writable)

    queued = splice.splice(to_sandbox, viewer_writable)
    rest = sandbox.splice(to_viewer, sandbox_writable)
    for data in (bytes(viewer.buf), *queued):  # what the viewer sent after its ClientInit, in order
        to_sandbox(data)
    if rest:
        to_viewer(rest)

    async def viewer_gone() -> Outcome:
        while (data := await viewer.message()) is not None:  # only a disconnect arrives here once spliced
            to_sandbox(data)
        await flushed.wait()  # what it sent before it left still goes (bounded: a stalled write ends the relay)
        return ending[0] if ending else Outcome(Ended.CLIENT_GONE, "viewer disconnected", stats)

    async def sandbox_gone() -> Outcome:
        exc = await asyncio.shield(sandbox.ended)  # (cancelling this task must not cancel the stream's own)
        if exc is None:
            return Outcome(Ended.SANDBOX_EOF, "the sandbox closed the VNC connection", stats)
        if isinstance(exc, ConnectionResetError):  # e.g. the VNC server closed with unread input (a viewer's garbage)
            return Outcome(Ended.SANDBOX_EOF, "the sandbox reset the VNC connection", stats)
        return Outcome(Ended.SANDBOX_ERROR, f"{type(exc).__name__}: {exc}", stats)

    reported = {"to_client": 0, "to_sandbox": 0}

    def report() -> None:
        """Byte counters go to `on_bytes` once a second and at the end, not per message."""
        if on_bytes is None:
            return
        for name, total in (("to_client", stats.to_client), ("to_sandbox", stats.to_sandbox)):
            if total > reported[name]:
                on_bytes(name, total - reported[name])
                reported[name] = total

    async def stopped() -> Outcome:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_EVERY)
            report()
        return Outcome(Ended.STOPPED, "session ended", stats)

    tasks: list[asyncio.Future[Outcome]] = [done]
    tasks += [asyncio.create_task(c) for c in (viewer_gone(), sandbox_gone(), stopped())]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done if done in finished else next(iter(finished))
        failure = first.exception()
        if failure is not None:
            if isinstance(failure, WebSocketDisconnect | RuntimeError):
                return Outcome(Ended.CLIENT_GONE, "viewer disconnected", stats)
            raise failure
        return first.result()
    finally:
        while stall:
            stall.pop().cancel()
        while poll:
            poll.pop().cancel()
        finish(Outcome(Ended.STOPPED, "relay ended", stats))  # later callbacks forward nothing
        if frame_seen and began[0] >= 0:  # the viewer left (or the relay ended) with its first update under way
            with contextlib.suppress(Exception):
                frame_seen.pop()()
        if not done.cancelled():
            done.exception()  # retrieved: a callback's failure after the end is not logged as lost
        for t in tasks[1:]:
            t.cancel()
        for t in tasks[1:]:
            with contextlib.suppress(BaseException):
                await t
        report()
