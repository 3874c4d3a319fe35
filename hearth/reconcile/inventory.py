"""What exists right now that hearth named: sandbox namespaces, fabric ports, sandbox directories.

Only names that parse back to a slot of *this* fabric are listed (`hearth.fabric.slot`); anything else — a foreign
namespace, link or directory — is invisible to the reconciler and therefore never touched.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.fabric.slot import link_index, sandbox_netns_index


@dataclass
class Inventory:
    netns: dict[int, str] = field(default_factory=dict)
    links: dict[int, list[str]] = field(default_factory=dict)
    workdirs: dict[int, Path] = field(default_factory=dict)

    def slots(self) -> set[int]:
        return set(self.netns) | set(self.links) | set(self.workdirs)

    def describe(self, index: int) -> list[str]:
        out = []
        if index in self.netns:
            out.append(f"netns {self.netns[index]}")
        out += [f"link {name}" for name in self.links.get(index, [])]
        if index in self.workdirs:
            out.append(f"dir {self.workdirs[index]}")
        return out


def scan_sync(settings: Settings) -> Inventory:
    inv = Inventory()
    fabric = settings.fabric_netns
    for name in netlink.list_netns():
        index = sandbox_netns_index(fabric, name)
        if index is not None:
            inv.netns[index] = name
    if netlink.netns_exists(fabric):
        with netlink.ns(fabric) as handle:
            for link in handle.get_links():
                name = str(netlink.attr(link, "IFLA_IFNAME"))
                parsed = link_index(name)
                if parsed is not None:
                    inv.links.setdefault(parsed[1], []).append(name)
    root = settings.data_dir / "sandboxes"
    if root.is_dir():
        for entry in root.iterdir():
            index = sandbox_netns_index(fabric, entry.name)
            if index is not None and entry.is_dir():
                inv.workdirs[index] = entry
    return inv


async def scan(settings: Settings) -> Inventory:
    return await asyncio.to_thread(scan_sync, settings)
