"""hearth/sandbox/select.py: `HEARTH_DRIVER=auto` with HEARTH_SANDBOX_CGROUP set never picks a VM driver (its VMs
would not join that cgroup and would stay in the node's), and says why it skipped them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hearth.config import load_settings
from hearth.sandbox.select import choose_driver


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap for the netns driver (scripts/setup.sh)")
def test_auto_with_the_sandbox_cgroup_picks_netns_and_names_why(tmp_path: Path) -> None:
    env = {"HEARTH_DRIVER": "auto", "HEARTH_SANDBOX_CGROUP": "/host/cgroup/hearth-sandboxes"}
    choice = choose_driver(load_settings({**env, "HEARTH_DATA_DIR": str(tmp_path)}, env_file=None))
    assert choice.driver.name == "netns"
    for vm in ("firecracker", "qemu"):
        assert "HEARTH_SANDBOX_CGROUP is set" in choice.skipped[vm], choice.skipped
