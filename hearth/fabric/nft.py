"""nftables through its JSON interface only (`nft -j`), inside a given network namespace.

The ruleset is computed purely from the settings (`ruleset`), then applied in one atomic transaction that replaces
hearth's own table and nothing else.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
from typing import Any

from hearth.config import Settings
from hearth.errors import FabricError, Hop
from hearth.fabric.dial import call_in_netns
from hearth.fabric.slot import UPLINK_INNER

TABLE = "hearth"
FAMILY = "inet"


_NFT_CTX_OUTPUT_JSON = 1 << 4


class _Lib:
    """libnftables (the library behind `nft`), loaded once per call site; JSON in, JSON out."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def run(self, command: str) -> tuple[int, str, str]:
        lib = self.lib
        ctx = lib.nft_ctx_new(0)
        try:
            lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = int(lib.nft_run_cmd_from_buffer(ctx, command.encode()))
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
            return rc, out, err
        finally:
            lib.nft_ctx_free(ctx)


async def nft(netns: str | None, payload: dict[str, Any] | None, *args: str, timeout: float = 10.0) -> Any:
    """Apply `payload` (nftables JSON, one atomic transaction) or run `args` (e.g. `list table inet hearth`) inside
    `netns` through libnftables; returns the parsed JSON output."""
    command = json.dumps(payload) if payload is not None else " ".join(args)
    try:
        lib = _Lib()
    except OSError as exc:
        raise FabricError(Hop.NAT, f"libnftables not available: {exc}", "install nftables (scripts/setup.sh)") from exc
    rc, out, err = await asyncio.to_thread(call_in_netns, netns, lambda: lib.run(command), timeout)
    if rc != 0:
        raise FabricError(
            Hop.NAT,
            f"nftables refused in namespace {netns or 'root'}: {err.strip()[:300]}",
            "check the nftables kernel support and run as root",
        )
    return json.loads(out) if out.strip() else None


async def list_table(netns: str | None, family: str = FAMILY, table: str = TABLE) -> list[dict[str, Any]] | None:
    """The objects of one table, or None when it does not exist."""
    try:
        out = await nft(netns, None, "list", "table", family, table)
    except FabricError as exc:
        if "No such file" in exc.message or "does not exist" in exc.message:
            return None
        raise
    items: list[dict[str, Any]] = out.get("nftables", []) if out else []
    return items


async def list_ruleset(netns: str | None) -> list[dict[str, Any]]:
    out = await nft(netns, None, "list", "ruleset")
    items: list[dict[str, Any]] = out.get("nftables", []) if out else []
    return items


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}}}


def _chain(name: str, hook: str, ctype: str = "filter", prio: int = 0, policy: str = "accept") -> dict[str, Any]:
    return {
        "add": {
            "chain": {
                "family": FAMILY,
                "table": TABLE,
                "name": name,
                "type": ctype,
                "hook": hook,
                "prio": prio,
                "policy": policy,
            }
        }
    }


def _match(field: str, value: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": field}}, "right": value}}


def ruleset(settings: Settings, table_exists: bool) -> dict[str, Any]:
    """hearth's table for the fabric namespace (pure).

    - forward: sandboxes cannot reach each other even routed through the bridge address (bridge → bridge drop);
      egress (bridge → uplink) only when enabled, replies always.
    - input: the fabric namespace runs no services for sandboxes except the agent callback port.
    - postrouting: masquerade INTERNAL_NETWORK out of the uplink when egress is on.
    """
    br = settings.bridge_device
    net = settings.internal_network
    cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    if table_exists:
        cmds.append({"delete": {"table": {"family": FAMILY, "name": TABLE}}})
        cmds.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
    established = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
    cmds += [
        _chain("forward", "forward", policy="drop"),
        _rule("forward", established, {"accept": None}),
        _rule("forward", _match("iifname", br), _match("oifname", br), {"counter": None}, {"drop": None}),
    ]
    if settings.egress:
        cmds.append(_rule("forward", _match("iifname", br), _match("oifname", UPLINK_INNER), {"accept": None}))
    cmds += [
        _chain("input", "input", policy="accept"),
        _rule("input", _match("iifname", br), established, {"accept": None}),
        _rule(
            "input",
            _match("iifname", br),
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "icmp"}},
            {"accept": None},
        ),
        _rule(
            "input",
            _match("iifname", br),
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "right": {"set": sorted({settings.callback_port, *settings.fabric_open_ports})},
                }
            },
            {"accept": None},
        ),
        _rule("input", _match("iifname", br), {"counter": None}, {"drop": None}),
    ]
    if settings.egress:
        cmds += [
            _chain("postrouting", "postrouting", ctype="nat", prio=100),
            _rule(
                "postrouting",
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "right": {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}},
                    }
                },
                _match("oifname", UPLINK_INNER),
                {"masquerade": None},
            ),
        ]
    return {"nftables": cmds}


def root_ruleset(settings: Settings, table: str, outer: str, exists: bool) -> dict[str, Any]:
    """Root-namespace table for egress: masquerade the uplink /30 out of the host's other interfaces."""
    up = settings.uplink_network
    cmds: list[dict[str, Any]] = [{"add": {"table": {"family": "ip", "name": table}}}]
    if exists:
        cmds += [
            {"delete": {"table": {"family": "ip", "name": table}}},
            {"add": {"table": {"family": "ip", "name": table}}},
        ]
    cmds += [
        {
            "add": {
                "chain": {
                    "family": "ip",
                    "table": table,
                    "name": "postrouting",
                    "type": "nat",
                    "hook": "postrouting",
                    "prio": 100,
                    "policy": "accept",
                }
            }
        },
        {
            "add": {
                "rule": {
                    "family": "ip",
                    "table": table,
                    "chain": "postrouting",
                    "expr": [
                        {
                            "match": {
                                "op": "==",
                                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                "right": {"prefix": {"addr": str(up.network_address), "len": up.prefixlen}},
                            }
                        },
                        {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": outer}},
                        {"masquerade": None},
                    ],
                }
            }
        },
    ]
    return {"nftables": cmds}


def has_masquerade(items: list[dict[str, Any]]) -> bool:
    return any("masquerade" in e for item in items if "rule" in item for e in item["rule"].get("expr", []))
