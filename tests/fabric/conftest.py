"""Fixtures for the fabric tests: isolated settings per test, and cleanup of everything a test may leave behind.

Root tests build their fabric in a namespace named `hearth-t<6 hex>` (unique per test) and, with egress, a unique
link-local /30 uplink in 169.254.100-199.x whose outer end lives in a namespace of the test's own
(HEARTH_UPLINK_NETNS, tests/uplinkns.py), never in the machine's root namespace; the finalizer removes the fabric
(forced), then the uplink namespace, and restores the host's net.ipv4.ip_forward.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from hearth.config import Settings, load_settings
from hearth.fabric import netlink, nft, nftrun
from hearth.fabric.fabric import Fabric
from tests import nsnames, uplinkns

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@pytest.fixture
def root_only() -> None:
    """Skip unless root with nftables."""
    if os.geteuid() != 0 or (shutil.which("nft") is None and not Path("/usr/sbin/nft").exists()):
        pytest.skip("needs root, network namespaces and nftables (apt-get install nftables)")


def _host_addresses() -> list[str]:
    with netlink.root() as r:
        return [str(netlink.attr(a, "IFA_ADDRESS")) for a in r.get_addr(family=2)]


def unique_uplink() -> IPv4Network:
    """A /30 in 169.254.100.0-169.254.199.255 (never .169.x) that no host address falls into."""
    with ThreadPoolExecutor(1) as pool:  # pyroute2's sync API refuses the event loop's thread
        taken = pool.submit(_host_addresses).result(timeout=10)
    while True:
        third = random.choice([n for n in range(100, 200) if n != 169])
        net = IPv4Network(f"169.254.{third}.{4 * random.randint(0, 63)}/30")
        if not any(IPv4Network(f"{t}/32").subnet_of(net) for t in taken):
            return net


@pytest.fixture
def make_settings_for(tmp_path: Path) -> Callable[..., Settings]:
    """Settings of an isolated fabric (no root needed to build them)."""

    def make(netns: str | None = None, **env: str) -> Settings:
        base = {
            "HEARTH_FABRIC_NETNS": netns or nsnames.new(),
            "HEARTH_DATA_DIR": str(tmp_path / "data"),
            "HEARTH_EGRESS": "false",  # egress=True gives a namespace for the uplink (never the root one)
        }
        return load_settings({**base, **env}, env_file=None)

    return make


@pytest.fixture
async def fabric_settings(
    root_only: None, make_settings_for: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Settings]]:
    """Factory of settings for root tests; everything their fabrics create is removed afterwards."""
    made: list[Settings] = []
    forward_before = IP_FORWARD.read_text()

    def make(netns: str | None = None, egress: bool = False, **env: str) -> Settings:
        if egress:
            with ThreadPoolExecutor(1) as pool:  # pyroute2's sync API refuses the event loop's thread
                outer = pool.submit(uplinkns.create).result(timeout=20)
            env = {**uplinkns.egress_env(outer), "HEARTH_UPLINK_NETWORK": str(unique_uplink()), **env}
        s = make_settings_for(netns, **env)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            try:
                await Fabric(s).down(force=True)
            finally:
                netlink.remove_netns(s.fabric_netns)
                if s.uplink_netns is None:
                    await nftrun.apply(None, nft.delete_table(nft.ROOT_FAMILY, nft.root_table(s.fabric_netns)))
            left = await Fabric(s).status()  # down() must have removed every trace
            assert not (left.netns_exists or left.root_nat or left.uplink_conflict), left.as_dict()
            if s.uplink_netns:
                uplinkns.remove(s.uplink_netns)
        if IP_FORWARD.read_text() != forward_before:
            IP_FORWARD.write_text(forward_before)
