"""The egress gate: table `inet hearth_egress` in the fabric namespace, the sandboxes granted a way out, and the drops
counted per sandbox (nftables counters, plus the DNS forwarder's refusals).

`up()` (re)builds the table from the settings and the current grants; `grant`/`revoke` add and remove one sandbox's
address (its drop counters are folded into the totals when it goes); `refresh()` reads the counters (every
REFRESH_EVERY seconds while running, and on demand for the doctor). Every nft call has a timeout (hearth.fabric.nft).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from hearth.config import Settings
from hearth.egress import rules
from hearth.egress.policy import Grant
from hearth.errors import FabricError, Hop
from hearth.fabric import netlink, nftrun

log = logging.getLogger("hearth.egress")
REFRESH_EVERY = 10.0
DNS_REFUSED = "dns_refused"


@dataclass
class Drops:
    """Drops per live sandbox (owner → reason → packets/queries) and the totals of every sandbox since start."""

    live: dict[str, dict[str, int]] = field(default_factory=dict)
    totals: Counter[str] = field(default_factory=Counter)


class EgressGate:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.grants: dict[IPv4Address, Grant] = {}
        self._nft: dict[str, dict[str, int]] = {}  # last read: address → reason → packets
        self._dns: dict[IPv4Address, int] = {}  # DNS refusals of the live grants
        self._ended: Counter[str] = Counter()  # reason → drops of sandboxes already gone
        self._lock = asyncio.Lock()
        self._revoking: set[IPv4Address] = set()  # revokes waiting for the lock: applied together
        self._task: asyncio.Task[None] | None = None

    @property
    def on(self) -> bool:
        return bool(self.s.egress)

    @property
    def _ns(self) -> str:
        return self.s.fabric_netns

    async def _apply(self, payload: dict[str, object]) -> None:
        await nftrun.apply(self._ns, payload, hop=Hop.EGRESS)

    # ---- table -------------------------------------------------------------------------------------------------
    async def up(self) -> None:
        """Build the table with the current grants (egress on), or remove it (off). Resets the counters."""
        async with self._lock:
            if not self.on:
                await self._drop()
                return
            await self._apply(rules.replace(rules.ruleset(self.s, self.grants)))
            self._nft = {}
            log.info("egress: table inet %s built (%d sandbox(es) granted)", rules.TABLE, len(self.grants))

    async def _drop(self) -> None:
        if netlink.netns_exists(self._ns) and await nftrun.table_exists(self._ns, rules.FAMILY, rules.TABLE):
            await self._apply(rules.delete())

    async def down(self) -> None:
        await self.stop()
        async with self._lock:
            await self._drop()

    async def listing(self) -> list[dict[str, object]] | None:
        """The table as nft lists it (None: missing)."""
        return await nftrun.list_table(self._ns, rules.FAMILY, rules.TABLE, hop=Hop.EGRESS)

    # ---- grants ------------------------------------------------------------------------------------------------
    async def grant(self, g: Grant) -> None:
        """Let `g.ip` out (idempotent). Without egress, nothing to do."""
        if not self.on:
            return
        async with self._lock:
            self.grants[g.ip] = g
            await self._apply(rules.elements("granted", [g.ip]))
        log.info("egress granted", extra={"session_id": g.owner, "ip": str(g.ip)})

    async def revoke(self, ip: IPv4Address) -> None:
        """Forget `ip` (its drops go to the totals); revoking one that was never granted is success. Revokes that
        arrive while another is applied (a drain ends many sandboxes at once) are applied together: one listing of
        the table and one nft transaction for all of them, instead of one listing (O(sandboxes)) each."""
        self._revoking.add(ip)
        try:
            await self._lock.acquire()
        except BaseException:  # cancelled while waiting: this revoke did not happen (as before batching)
            self._revoking.discard(ip)
            raise
        try:
            if ip not in self._revoking:
                return  # revoked by the batch that held the lock before us
            batch, self._revoking = self._revoking, set()
            await self._revoke(sorted(batch))
        finally:
            self._lock.release()

    async def _revoke(self, ips: list[IPv4Address]) -> None:
        granted = [ip for ip in ips if self.grants.pop(ip, None) is not None]
        if not granted or not self.on:
            return
        try:
            items = await self.listing() or []
            drops = rules.drops(items)
            for ip in granted:
                for reason, n in drops.get(str(ip), {}).items():
                    self._ended[reason] += n
                self._ended[DNS_REFUSED] += self._dns.pop(ip, 0)
            cmds = [("granted", granted)]
            for item in items:
                body = item.get("set")
                name = str(body.get("name", "")) if isinstance(body, dict) else ""
                if name.startswith("drop_") or name in ("conns", "rate", "bw_up", "bw_down"):
                    present = set(rules.set_elements([item], name))
                    if held := [ip for ip in granted if str(ip) in present]:
                        cmds.append((name, held))
            try:
                await self._apply(
                    {"nftables": [c for name, held in cmds for c in rules.elements(name, held, "delete")["nftables"]]}
                )
            except FabricError:  # one element already gone fails the whole transaction: one by one, gone is success
                for name, held in cmds:
                    for ip in held:
                        with contextlib.suppress(FabricError):
                            await self._apply(rules.elements(name, [ip], "delete"))
        except FabricError as exc:
            shown = ", ".join(str(ip) for ip in granted)
            log.warning("egress: revoking %s failed (%s); `hearth fabric up` rebuilds the table", shown, exc.reason)
        for ip in granted:
            self._nft.pop(str(ip), None)

    def retarget(self, ip: IPv4Address, owner: str, domains: tuple[str, ...] | None) -> None:
        """A granted sandbox now runs for `owner` with these domains (a pooled one handed out); no nft change."""
        if ip in self.grants:
            self.grants[ip] = Grant(ip, owner, domains)

    def grant_of(self, ip: IPv4Address) -> Grant | None:
        return self.grants.get(ip)

    # ---- counting ----------------------------------------------------------------------------------------------
    def count_dns_refusal(self, ip: IPv4Address) -> None:
        if ip in self.grants:
            self._dns[ip] = self._dns.get(ip, 0) + 1
        else:
            self._ended[DNS_REFUSED] += 1

    async def refresh(self) -> Drops:
        """Read the counters now; the drops per live sandbox and the totals."""
        if self.on:
            items = await self.listing()
            self._nft = rules.drops(items or [])
        return self.drops()

    def drops(self) -> Drops:
        """From the last read (no I/O): per live sandbox (owner) and totals by reason."""
        out = Drops(totals=Counter(self._ended))
        by_ip = {str(ip): g.owner for ip, g in self.grants.items()}
        for ip, reasons in self._nft.items():
            owner = by_ip.get(ip, f"ungranted {ip}")
            for reason, n in reasons.items():
                out.live.setdefault(owner, {})[reason] = n
                out.totals[reason] += n
        for addr, n in self._dns.items():
            g = self.grants.get(addr)
            if g is not None and n:
                out.live.setdefault(g.owner, {})[DNS_REFUSED] = n
                out.totals[DNS_REFUSED] += n
        return out

    # ---- background refresh ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.on and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="egress-counters")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            try:
                await self.refresh()
            except FabricError as exc:
                log.warning("egress: counters not read: %s", exc.reason)
