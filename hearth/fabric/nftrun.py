"""Running nft (`nft -j …`, inside a namespace through `nsenter --net=/run/netns/<name>`), each call with a timeout:
`apply` one JSON transaction of hearth's own tables, list a table, take (read and reset) the L2 drop counters.

The rulesets themselves are computed, purely, in hearth/fabric/nft.py; nft's text output is never parsed here
either, and its stderr only ends up in error messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Iterable
from typing import Any

from hearth.childproc import kill_and_reap
from hearth.errors import FabricError, Hop
from hearth.fabric.dial import NETNS_RUN_DIR
from hearth.fabric.nft import (
    FABRIC_TABLE,
    L2_FAMILY,
    L2_SPOOFS,
    Obj,
    check_ours,
    l2_drops,
    l2_drops_by_port,
    port_counter,
)

NFT_TIMEOUT = 10.0
_INSTALL_HINT = "install nftables and util-linux (apt-get install nftables util-linux) and run as root"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin") if shutil.which(f"{d}/{name}")), None
    )
    if found is None:
        raise FabricError(Hop.FORWARDING, f"`{name}` not found", _INSTALL_HINT)
    return found


def argv(netns: str | None, *args: str) -> list[str]:
    """The command line for `nft -j <args>`, inside `netns` (None: the caller's own namespace)."""
    cmd = [_binary("nft"), "-j", *args]
    if netns is None:
        return cmd
    return [_binary("nsenter"), f"--net={NETNS_RUN_DIR / netns}", "--", *cmd]


def _feed(fd: int, data: bytes) -> None:
    """Write `data` to a pipe and close it (on a worker thread; a killed reader ends it with EPIPE)."""
    try:
        with open(fd, "wb", closefd=True) as pipe:
            pipe.write(data)
    except BrokenPipeError:
        pass  # nft exited without reading all of it: its exit status and stderr say why


async def _run(netns: str | None, args: list[str], stdin: bytes | None, hop: Hop, timeout: float) -> bytes:
    """Run nft with a timeout (killed when it expires or the caller is cancelled); its stdout, or FabricError.

    stdin is a real pipe made here: `nft -f -` opens /dev/stdin, which fails (ENXIO) on the socketpair that uvloop's
    subprocess support would hand it.
    """
    where = f"namespace {netns}" if netns else "the host namespace"
    if netns is not None and not (NETNS_RUN_DIR / netns).exists():
        raise FabricError(Hop.FABRIC, f"network namespace {netns} does not exist", "run `hearth fabric up`")
    rfd, wfd = os.pipe() if stdin is not None else (-1, -1)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv(netns, *args),
            stdin=rfd if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        if stdin is not None:
            os.close(wfd)
        raise FabricError(hop, f"cannot run nft in {where}: {exc}", _INSTALL_HINT) from exc
    finally:
        if stdin is not None:
            os.close(rfd)
    work: list[Awaitable[Any]] = [proc.communicate()]
    if stdin is not None:
        work.append(asyncio.to_thread(_feed, wfd, stdin))
    try:
        (out, err), *_ = await asyncio.wait_for(asyncio.gather(*work), timeout)
    except TimeoutError:
        await kill_and_reap(proc, 5)
        raise FabricError(
            hop, f"nft {' '.join(args)} did not finish within {timeout:g}s in {where}", "check `dmesg`"
        ) from None
    except BaseException:  # cancelled: never leave nft running
        await kill_and_reap(proc, 5)
        raise
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().replace("\n", " ")[:400]
        raise FabricError(hop, f"nft {' '.join(args)} failed in {where}: {detail}", _INSTALL_HINT)
    out_bytes: bytes = out
    return out_bytes


async def apply(netns: str | None, payload: Obj, *, hop: Hop = Hop.FORWARDING, timeout: float = NFT_TIMEOUT) -> None:
    """Run one JSON transaction (`nft -j -f -`) inside `netns`; all of it or nothing. Only hearth's tables."""
    check_ours(payload)
    await _run(netns, ["-f", "-"], json.dumps(payload).encode(), hop, timeout)


async def _list(netns: str | None, args: list[str], hop: Hop, timeout: float, verb: str = "list") -> list[Obj]:
    out = await _run(netns, [verb, *args], None, hop, timeout)
    try:
        data = json.loads(out) if out.strip() else {}
    except ValueError as exc:
        raise FabricError(hop, f"nft -j {verb} {' '.join(args)} returned no JSON: {exc}", _INSTALL_HINT) from exc
    items: list[Obj] = data.get("nftables", [])
    return items


async def take_l2_counters(netns: str, *, timeout: float = NFT_TIMEOUT) -> list[Obj] | None:
    """Every counter of table bridge hearth since the last call, reset atomically (`nft reset counters`): each
    spoofing attempt is reported once (`l2_drops`: totals; `l2_drops_by_port`: who sent them). None when the table
    does not exist."""
    if not await table_exists(netns, L2_FAMILY, FABRIC_TABLE, hop=Hop.ARP, timeout=timeout):
        return None
    return await _list(netns, ["counters", "table", L2_FAMILY, FABRIC_TABLE], Hop.ARP, timeout, "reset")


async def take_l2_drops(netns: str, *, timeout: float = NFT_TIMEOUT) -> dict[str, int] | None:
    """The L2 drop totals since the last call (reset: `take_l2_counters`); None when the table does not exist."""
    items = await take_l2_counters(netns, timeout=timeout)
    return None if items is None else l2_drops(items)


async def take_port_drops(
    netns: str, ports: Iterable[str], *, timeout: float = NFT_TIMEOUT
) -> dict[str, dict[str, int]]:
    """The spoofing drops sent by `ports` (e.g. one sandbox's port and UNNAMED) since the last look, resetting only
    their counters (one transaction): the other ports' drops stay for their own sessions' reports."""
    ident = {"family": L2_FAMILY, "table": FABRIC_TABLE}
    cmds = [{"reset": {"counter": {**ident, "name": port_counter(k, p)}}} for p in ports for k in L2_SPOOFS]
    payload = {"nftables": cmds}
    check_ours(payload)
    out = await _run(netns, ["-f", "-"], json.dumps(payload).encode(), Hop.ARP, timeout)
    items: list[Obj] = []
    for line in out.decode(errors="replace").splitlines():  # one JSON document per reset command
        try:
            items += json.loads(line).get("nftables", []) if line.strip() else []
        except ValueError as exc:
            raise FabricError(Hop.ARP, f"nft -j reset counter returned no JSON: {exc}", _INSTALL_HINT) from exc
    found = l2_drops_by_port(items)
    return {p: found.get(p, dict.fromkeys(L2_SPOOFS, 0)) for p in ports}


async def table_exists(
    netns: str | None, family: str, name: str, *, hop: Hop = Hop.FORWARDING, timeout: float = NFT_TIMEOUT
) -> bool:
    items = await _list(netns, ["tables", family], hop, timeout)
    return any(i.get("table", {}).get("name") == name for i in items)


async def list_table(
    netns: str | None, family: str, name: str, *, hop: Hop = Hop.FORWARDING, timeout: float = NFT_TIMEOUT
) -> list[Obj] | None:
    """The objects of one table (`nft -j list table`), or None when it does not exist."""
    if not await table_exists(netns, family, name, hop=hop, timeout=timeout):
        return None
    try:
        return await _list(netns, ["table", family, name], hop, timeout)
    except FabricError:
        if not await table_exists(netns, family, name, hop=hop, timeout=timeout):
            return None  # removed in between
        raise
