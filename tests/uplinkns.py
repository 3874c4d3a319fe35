"""The uplink's outer namespace for root tests (HEARTH_UPLINK_NETNS): tests never put the uplink in the machine's
root namespace. A namespace named like a test fabric (tests/nsnames.py, so the leak guard checks it), with lo up;
whoever needs "the internet" behind it (hearth/…/tests' stand-ins) adds links and services into it."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from ipaddress import IPv4Network

from hearth.fabric import netlink
from tests import nsnames


def create() -> str:
    """A new, empty namespace with lo up (call from a worker thread or synchronous code)."""
    name = nsnames.new()
    netlink.create_netns(name)
    with netlink.ns(name) as h:
        h.link("set", index=netlink.link_index(h, "lo") or 1, state="up")
    return name


def remove(name: str) -> None:
    """Remove it; already gone is success (the uplink pair inside dies with it)."""
    netlink.remove_netns(name)


def random_uplink() -> IPv4Network:
    """A link-local /30 (never 169.254.169.x): inside a namespace of the test's own, no host address can clash."""
    third = random.choice([n for n in range(100, 200) if n != 169])
    return IPv4Network(f"169.254.{third}.{4 * random.randint(0, 63)}/30")


def egress_env(uplink_netns: str) -> dict[str, str]:
    """Settings for egress through `uplink_netns`."""
    return {
        "HEARTH_EGRESS": "true",
        "HEARTH_UPLINK_NETWORK": str(random_uplink()),
        "HEARTH_UPLINK_NETNS": uplink_netns,
    }


@contextlib.contextmanager
def uplink_namespace() -> Iterator[str]:
    """A namespace for the uplink's outer end, removed afterwards."""
    name = create()
    try:
        yield name
    finally:
        remove(name)
