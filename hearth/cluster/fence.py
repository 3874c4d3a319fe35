"""A node cut off from the cluster fences itself (issue 24): once its beats have not reached the store for
HEARTH_NODE_DEAD_AFTER, the others may have marked it down and failed its sessions, so it closes its viewers (4502
"node partitioned") and admits nothing until a beat reaches the store again.

Cut off is not the same as "the store is down": when the database is away for everyone, nobody can mark anybody
down, and ending the viewers would turn a database blip into an outage of every desktop. So before fencing, the node
asks the other nodes it last saw alive (their `/ready`, which says whether each reaches the store):
- some peer reaches the store → this node alone is cut off: fence;
- no peer answers at all → this node's own network is gone: fence;
- peers answer, none reaches the store → the store is down for everyone: keep serving (and ask again next time).
Before fencing, the node tries the store once more itself: at the end of an outage the peers may reach it a moment
before this node's next beat does, and that is no partition.
A node that knows no peer (a single node) never fences: nobody could have ended its sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from hearth.cluster.credential import node_tls
from hearth.config import Settings

log = logging.getLogger("hearth.cluster")
CONNECT_TIMEOUT = 2.0  # a peer that does not accept a connection within this is unreachable from here
READ_TIMEOUT = 7.0  # its /ready checks the store with a 5 s bound of its own


class Verdict:
    REACHES_STORE = "reaches the store"
    NO_STORE = "cannot reach the store either"
    UNREACHABLE = "unreachable"


async def ask_peer(http: httpx.AsyncClient, address: str) -> str:
    """What one peer says about the store (a Verdict)."""
    try:
        r = await http.get(address.rstrip("/") + "/ready")
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol, httpx.InvalidURL):
        return Verdict.UNREACHABLE
    except httpx.HTTPError:
        return Verdict.NO_STORE  # it accepted the connection: it is reachable, its store check hung
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        if r.json()["detail"]["store"] == "ok":
            return Verdict.REACHES_STORE
    return Verdict.NO_STORE


class Fence:
    def __init__(
        self,
        s: Settings,
        on_change: Callable[[str | None], None],
        ask: Callable[[str], Awaitable[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reaches_store: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.node_id = s.node_id
        self.dead_after = s.node_dead_after
        self.period = s.node_heartbeat
        self._on_change = on_change  # the reason when fenced, None when lifted
        self._ask = ask
        self._clock = clock
        self._reaches_store = reaches_store  # this node's own store probe, right now (bounded)
        self.last_ok = clock()  # the last beat that reached the store
        self.peers: tuple[str, ...] = ()  # the other live nodes' addresses, as of that beat
        self.reason: str | None = None
        self._tls = node_tls(s)  # peers serving TLS are verified against HEARTH_NODE_CA (as edges verify them)

    def answered(self, peers: tuple[str, ...]) -> None:
        """A beat reached the store (with the other live nodes' addresses): lift a fence."""
        self.last_ok, self.peers = self._clock(), peers
        if self.reason is not None:
            log.warning("fence lifted: the store answers again", extra={"node_id": self.node_id})
            self.reason = None
            self._on_change(None)

    async def check(self) -> str | None:
        """Fence when cut off for longer than dead-after (see the module's doc); returns the fence's reason."""
        away = self._clock() - self.last_ok
        if self.reason is not None or away <= self.dead_after or not self.peers:
            return self.reason
        verdicts = await asyncio.gather(*(self._verdict(p) for p in self.peers))
        if Verdict.REACHES_STORE in verdicts:
            why = "the other nodes reach the store"
        elif all(v == Verdict.UNREACHABLE for v in verdicts):
            why = "no other node answers"
        else:
            return None  # the store is down for everyone: nobody can end this node's sessions
        if self._reaches_store is not None and await self._reaches_store():
            return None  # it answers this node again: its next beat lifts the doubt
        self.reason = f"[node] node {self.node_id} partitioned: no store for {away:.0f}s, {why} — reconnect"
        log.warning("node fenced: viewers closed, nothing admitted", extra={"node_id": self.node_id, "why": why})
        self._on_change(self.reason)
        return self.reason

    async def _verdict(self, address: str) -> str:
        if self._ask is not None:
            return await self._ask(address)
        timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, verify=self._tls) as http:
            return await ask_peer(http, address)

    async def run(self) -> None:
        """Check every heartbeat period, whatever the beats are doing (a beat may hang on a dead link)."""
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("fence check failed", extra={"node_id": self.node_id})
            await asyncio.sleep(self.period)
