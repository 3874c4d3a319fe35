"""The viewer WebSocket: `/api/auth/session/{id}/novnc/websock?token=…` (subprotocol `binary`, as noVNC uses).

Every refusal or failure is an explicit close with a code and a reason — never a silent drop (the seed's 1006):
4400 the viewer's RFB handshake was not RFB, 4401 bad token, 4403 the viewer sent a message the gateway does
not forward (hearth/gateway/viewonly.py: unknown, not taken by the VNC server, or before its preconditions; a
view-only viewer's input is dropped silently), 4404 unknown session, 4408 not
ready in time, 4410 no desktop (a direct-mode session: the person signs in in their own browser), 4421 the session
lives on another node (the reason names it and its address: connect there, or through an edge; a token issued for
another node is a 4401 naming both nodes), 4502 sandbox unreachable (naming the hop), 4503 temporarily unavailable —
the controller is shutting down, or its store is down and the session is not one this node knows live — reconnect,
1000 on sandbox EOF or a normal end. (1012 is uvicorn's own, only if a viewer outlives the 4503 drain.)

A viewer of a session this node knows live (its own transitions: ready or later, its sandbox running here) is admitted
from the node's memory — no store round trip, and so also while the store is down; any other goes through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from hearth.config import Settings
from hearth.errors import HearthError, Hop, StoreError
from hearth.fabric.dial import open_connection, open_protocol
from hearth.gateway.desktop_size import DesktopSizes
from hearth.gateway.greeting import Greeting
from hearth.gateway.ports import Relaying, Rows, Targets, Viewers
from hearth.gateway.predial import Predial
from hearth.gateway.relay import Ended, relay
from hearth.gateway.rfbspec import PROFILES
from hearth.gateway.tokens.base import ForeignToken, Scope, TokenError, TokenStore
from hearth.log import bind_session
from hearth.observe.metrics import Metrics
from hearth.rfb.stream import SandboxStream
from hearth.session.owner import refuse
from hearth.session.standby import Standby
from hearth.session.states import Status
from hearth.session.view import SessionNotFound, SessionView
from hearth.signin.modes import SigninMode
from hearth.store.db import Database

log = logging.getLogger("hearth.gateway")

BAD_RFB, BAD_TOKEN, VIEW_ONLY, UNKNOWN, NOT_READY = 4400, 4401, 4403, 4404, 4408
NO_DESKTOP, ELSEWHERE, UNREACHABLE, UNAVAILABLE = 4410, 4421, 4502, 4503
SHUTTING_DOWN = "controller shutting down — reconnect"
DIALS_PER_SANDBOX = 4  # below Xvnc's listen backlog (5): a burst of viewers never overflows its accept queue


def close_reason(text: str) -> str:
    """WebSocket close reasons are limited to 123 UTF-8 bytes."""
    raw = text.encode("utf-8")
    if len(raw) <= 123:
        return text
    return raw[:120].decode("utf-8", "ignore") + "..."


def make_router(
    settings: Settings,
    service: Relaying,
    records: Rows,
    boots: Targets,
    tokens: TokenStore,
    db: Database,
    gauge: Viewers,
    metrics: Metrics,
    standby: Standby | None = None,
) -> APIRouter:
    """The viewer WebSocket. `service`, `records`, `boots`: the sessions as the gateway sees them
    (hearth/gateway/ports.py); `db` names the node holding another node's session; `gauge` counts connected viewers;
    `standby`: connections held to warm-pool desktops, which a session's viewer takes instead of dialling."""
    held = standby if standby is not None else Standby()
    router = APIRouter()

    # At most DIALS_PER_SANDBOX dials in flight per sandbox, from connect until the sandbox's RFB handshake is done:
    # Xvnc listens with a backlog of 5, and a burst beyond it overflows the accept queue — the kernel drops those
    # handshakes' last ACKs and the connections wait for SYN-ACK retransmits, seconds apart (measured: 50 at once,
    # 12 served within 30 s; tests/gateway/test_parallel_dials.py). The gateway is its only client: bounding here
    # is enough, and viewers joining together are dialled side by side rather than one after another.
    dial_gates: weakref.WeakValueDictionary[str, asyncio.Semaphore] = weakref.WeakValueDictionary()

    byte_counters = {d: metrics.gateway_bytes.labels(d) for d in ("to_client", "to_sandbox")}  # bound once
    server = PROFILES[settings.vnc_server]  # what the sandbox's VNC server takes (hearth/gateway/rfbspec.py)
    width, height = settings.screen.split("x")[:2]
    sizes = DesktopSizes((int(width), int(height)))  # who owns each desktop's size

    def count_bytes(direction: str, n: int) -> None:
        byte_counters[direction].inc(n)

    @router.websocket("/api/auth/session/{session_id}/novnc/websock")
    async def websock(ws: WebSocket, session_id: str, token: str = "") -> None:
        # The viewer's RFB handshake up to ClientInit, started once the session is known to be one with a desktop
        # and not over: it runs while the session boots and the sandbox is dialled (hearth/gateway/relay.py).
        # A warm-pool hand-over's desktop is dialled meanwhile too (hearth/gateway/predial.py).
        greeting: list[Greeting] = []
        predial: list[Predial] = []
        try:
            await serve(ws, session_id, token, greeting, predial)
        finally:
            for g in greeting:  # whatever ended the route (a cancel, a bug) the greeting ends with it
                await g.cancel()
            for p in predial:
                await p.cancel()

    def gate_of(session_id: str) -> asyncio.Semaphore:
        gate = dial_gates.get(session_id)
        if gate is None:
            gate = dial_gates[session_id] = asyncio.Semaphore(DIALS_PER_SANDBOX)
        return gate

    async def serve(
        ws: WebSocket, session_id: str, token: str, greeting: list[Greeting], predial: list[Predial]
    ) -> None:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="binary" if "binary" in offered else None)

        async def close(code: int, reason: str) -> None:
            for g in greeting:
                await g.cancel()
            for p in predial:
                await p.cancel()
            log.info("viewer closed", extra={"code": code, "close_reason": reason})
            metrics.gateway_closes.labels(str(code)).inc()
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the viewer already went away
                await ws.close(code, close_reason(reason))

        with bind_session(session_id):
            here = settings.node_id
            foreign: ForeignToken | None = None
            try:
                claims = tokens.verify(token, session_id)
            except ForeignToken as exc:  # genuine, but another node's: refused below, naming where the session is
                foreign, claims = exc, exc.claims
            except TokenError as exc:
                return await close(BAD_TOKEN, f"unauthorized: {exc}")
            if service.draining:
                return await close(UNAVAILABLE, SHUTTING_DOWN)
            if service.fenced:  # cut off from the cluster (hearth/cluster/fence.py): the store may have ended it
                return await close(UNREACHABLE, service.fenced)
            known = service.live_view(session_id)  # this node's memory: no store round trip (and none needed)
            view: SessionView
            try:
                stored = known or await records.get(session_id)
                if stored.node_id != here:
                    refused = await refuse(db, here, session_id, stored.node_id, "viewer")
                    return await close(ELSEWHERE, refused.short)
                if foreign is not None:
                    log.warning(
                        "viewer token for another node refused",
                        extra={
                            "session_id": session_id,
                            "issued_for": foreign.issued_for,
                            "owner_node": stored.node_id,
                            "this_node": here,
                        },
                    )
                    return await close(BAD_TOKEN, f"unauthorized: {foreign}")
                if stored.mode is SigninMode.DIRECT:
                    return await close(NO_DESKTOP, "no desktop: this session signs in in your own browser (direct)")
                if not stored.status.terminal:
                    greeting.append(Greeting(ws))
                    warm = None if known else boots.warm(session_id)
                    if warm is not None and not held.holds(warm):  # no standby connection: dial it meanwhile
                        predial.append(Predial(warm, gate_of(session_id)))
                view = known or await service.wait_until(session_id, settings.viewer_wait)
            except SessionNotFound:
                return await close(UNKNOWN, f"unknown session {session_id}")
            except StoreError:
                return await close(UNAVAILABLE, "[store] state store unavailable — reconnect shortly")
            if view.status.booting:
                return await close(NOT_READY, f"sandbox not ready within {settings.viewer_wait:.0f}s; retry")
            if view.status.terminal:
                code = UNREACHABLE if view.status is Status.FAILED else 1000
                return await close(code, f"session {view.status.value}: {view.reason or ''}".strip())
            target = boots.target(view)
            gate = gate_of(session_id)
            early = held.take(target) or (await predial[0].take(target) if predial else None)
            gated: list[asyncio.Semaphore] = []

            def dialled() -> None:
                if gated:
                    gated.pop().release()

            if early is not None:  # dialled and handshaken before: while the sandbox was pooled, or being handed over
                sandbox, init = early
            else:
                init = None
                await gate.acquire()
                gated.append(gate)
                try:
                    sandbox = await open_protocol(target.netns, target.ip, target.rfb_port, 5.0, SandboxStream)
                except (OSError, TimeoutError) as exc:
                    dialled()
                    where = f"{target.ip}:{target.rfb_port}"
                    err = HearthError(Hop.VNC, f"sandbox {where} unreachable ({type(exc).__name__})")
                    reason = await boots.explain(session_id, err)
                    return await close(UNREACHABLE, reason)
            stop = service.stop_event(session_id)
            gauge.add(session_id)
            metrics.gateway_connections.inc()
            claim = sizes.claim(session_id)
            left = False
            try:
                outcome = await relay(
                    ws,
                    sandbox,
                    stop,
                    view_only=claims.scope is Scope.VIEW,
                    on_first_frame=lambda: service.first_frame(view),
                    on_frame_seen=lambda: service.frame_seen(view),
                    on_bytes=count_bytes,
                    on_sandbox_handshake=dialled,
                    server=server,
                    may_resize=claim.may_resize,
                    greeting=greeting[0] if greeting else None,
                    sandbox_init=init,
                )
                left = outcome.ended in (Ended.CLIENT_GONE, Ended.FORBIDDEN)
            finally:
                dialled()
                gauge.remove(session_id)
                metrics.gateway_connections.dec()
                # A viewer that owned the desktop's size left: back to the default (the sandbox is still there).
                redial = functools.partial(open_connection, target.netns, target.ip, target.rfb_port, 5.0)
                sizes.release(claim, redial if left else None, gate)
            log.info(
                "relay ended",
                extra={"ended": outcome.ended.value, "rx": outcome.stats.to_sandbox, "tx": outcome.stats.to_client},
            )
            if outcome.ended is Ended.CLIENT_GONE:
                metrics.gateway_closes.labels("client").inc()
                return None
            if outcome.ended is Ended.SANDBOX_EOF:
                return await close(1000, outcome.detail)
            if outcome.ended is Ended.BAD_VIEWER:
                return await close(BAD_RFB, outcome.detail)
            if outcome.ended is Ended.FORBIDDEN:
                log.warning(
                    "viewer cut off: a message the gateway does not forward", extra={"close_reason": outcome.detail}
                )
                return await close(VIEW_ONLY, outcome.detail)
            if outcome.ended is Ended.STOPPED and service.draining:
                return await close(UNAVAILABLE, SHUTTING_DOWN)
            if outcome.ended is Ended.STOPPED and service.fenced:
                return await close(UNREACHABLE, service.fenced)
            try:
                latest = await records.get(session_id)
            except StoreError:  # ended while the store is down (the end is recorded later)
                return await close(1000, "session ended")
            if outcome.ended is Ended.STOPPED and latest.status is not Status.FAILED:
                return await close(1000, f"session {latest.status.value}")
            reason = latest.reason or await boots.explain(
                session_id, HearthError(Hop.GATEWAY, f"relay to sandbox failed: {outcome.detail}")
            )
            return await close(UNREACHABLE, reason)

    return router
