"""Namespaces made and removed with system calls (no `ip` process): a removed namespace leaves no mount and no file,
removing it again or one never made is success, and a process inside keeps its namespace (as with `ip netns
delete`)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from hearth.fabric import netlink
from hearth.fabric.dial import NETNS_RUN_DIR
from hearth.sandbox.procs import pids_in_netns
from tests import nsnames

pytestmark = pytest.mark.netns


def _mounted(name: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(NETNS_RUN_DIR / name) for line in f)


def test_remove_detaches_the_mount_and_removes_the_file() -> None:
    name = f"{nsnames.new()}-s0"
    assert netlink.create_netns(name) and _mounted(name)
    sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
    try:
        while not pids_in_netns(name):  # `ip netns exec` has entered it
            time.sleep(0.01)
        inode = os.stat(NETNS_RUN_DIR / name).st_ino
        netlink.remove_netns(name)
        assert not netlink.netns_exists(name) and not _mounted(name)
        assert os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino == inode  # its process keeps it, as with `ip`
        netlink.remove_netns(name)  # already gone: success
    finally:
        sleeper.kill()
        sleeper.wait()
        netlink.remove_netns(name)


def test_a_leftover_file_that_is_not_mounted_is_removed() -> None:
    name = f"{nsnames.new()}-s1"
    (NETNS_RUN_DIR / name).touch()  # what a crash between the mount's detach and the unlink leaves
    netlink.remove_netns(name)
    assert not netlink.netns_exists(name)
