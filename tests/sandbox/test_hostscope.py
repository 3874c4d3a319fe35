"""hearth/sandbox/hostscope.py: the sandboxes' own cgroup gets its budget (HEARTH_SANDBOX_MEMORY_MAX → memory.max,
HEARTH_SANDBOX_CPU_MAX → cpu.max) when it is prepared, or a DriverError naming the setting and the fix."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.config import Settings, load_settings
from hearth.errors import ConfigError, DriverError
from hearth.sandbox import hostscope


def settings(**env: str) -> Settings:
    return load_settings(env, env_file=None)


def fake_cgroup(root: Path) -> Path:
    """A directory laid out like a cgroup v2 child (the kernel would fill it on mkdir)."""
    (root / "cgroup.subtree_control").write_text("")
    cg = root / "hearth-sandboxes"
    cg.mkdir()
    for name in ("cgroup.procs", "memory.max", "cpu.max"):
        (cg / name).write_text("max\n")
    return cg


def test_the_budget_is_written_to_memory_max_and_cpu_max(tmp_path: Path) -> None:
    cg = fake_cgroup(tmp_path)
    s = settings(HEARTH_SANDBOX_CGROUP=str(cg), HEARTH_SANDBOX_MEMORY_MAX="7680Mi", HEARTH_SANDBOX_CPU_MAX="6")
    hostscope.prepare(s.sandbox_cgroup, s.sandbox_memory_max, s.sandbox_cpu_max)
    assert (cg / "memory.max").read_text() == f"{7680 * 1024 * 1024}\n"
    assert (cg / "cpu.max").read_text() == "600000 100000\n"


def test_unset_limits_leave_the_cgroup_alone(tmp_path: Path) -> None:
    cg = fake_cgroup(tmp_path)
    hostscope.prepare(cg)
    assert (cg / "memory.max").read_text() == "max\n" and (cg / "cpu.max").read_text() == "max\n"


def test_a_controller_that_cannot_be_enabled_names_the_setting_and_the_fix(tmp_path: Path) -> None:
    cg = fake_cgroup(tmp_path)
    (cg / "memory.max").unlink()  # the memory controller is off for this cgroup...
    (tmp_path / "cgroup.subtree_control").unlink()
    (tmp_path / "cgroup.subtree_control").mkdir()  # ...and cannot be enabled
    with pytest.raises(DriverError) as err:
        hostscope.prepare(cg, memory_max=1 << 30)
    assert "HEARTH_SANDBOX_MEMORY_MAX" in err.value.message and "memory controller" in err.value.message
    assert "+memory" in err.value.hint


def test_the_budget_is_read_in_kubernetes_units_and_needs_the_cgroup() -> None:
    cg = {"HEARTH_SANDBOX_CGROUP": "/host/cgroup/hearth-sandboxes"}
    assert settings(**cg, HEARTH_SANDBOX_MEMORY_MAX="8Gi").sandbox_memory_max == 8 << 30
    assert settings(**cg, HEARTH_SANDBOX_MEMORY_MAX="1000000000").sandbox_memory_max == 1_000_000_000
    with pytest.raises(ConfigError) as err:
        settings(**cg, HEARTH_SANDBOX_MEMORY_MAX="8 gigs")
    assert "sandbox_memory_max" in str(err.value) or "HEARTH_SANDBOX_MEMORY_MAX" in str(err.value)
    with pytest.raises(ConfigError) as err:
        settings(HEARTH_SANDBOX_MEMORY_MAX="8Gi")
    assert any("HEARTH_SANDBOX_MEMORY_MAX" in p and "HEARTH_SANDBOX_CGROUP" in p for p in err.value.problems)
    for driver in ("qemu", "firecracker"):  # their VMs do not join it: they would stay in the node's cgroup
        with pytest.raises(ConfigError) as err:
            settings(**cg, HEARTH_DRIVER=driver)
        assert any("HEARTH_DRIVER=netns" in p for p in err.value.problems)
    assert settings(**cg, HEARTH_DRIVER="netns").sandbox_cgroup


def v2_hierarchy() -> Path | None:
    """A cgroup v2 mount of this host that this process may write (root), or None."""
    if os.geteuid() != 0:
        return None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2" and os.access(fields[1], os.W_OK):
            return Path(fields[1])
    return None


@pytest.fixture
def real_cgroup() -> Iterator[Path]:
    root = v2_hierarchy()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy on this host")
    cg = root / f"hearth-test-memmax-{os.getpid()}"
    try:
        yield cg
    finally:
        if cg.exists():
            cg.rmdir()  # empty: no process ever joined it


@pytest.mark.netns
def test_a_real_cgroup_gets_memory_max_or_a_clear_error(real_cgroup: Path) -> None:
    """On the host's own cgroup v2 hierarchy: with the memory controller available to it, memory.max holds the
    budget; without (e.g. a hybrid host whose memory controller is on v1), the error names the setting and the
    fix — never a silently unbounded cgroup."""
    controllers = (real_cgroup.parent / "cgroup.controllers").read_text().split()
    if "memory" in controllers:
        hostscope.prepare(real_cgroup, memory_max=512 << 20)
        assert (real_cgroup / "memory.max").read_text().strip() == str(512 << 20)
    else:
        with pytest.raises(DriverError) as err:
            hostscope.prepare(real_cgroup, memory_max=512 << 20)
        assert "HEARTH_SANDBOX_MEMORY_MAX" in err.value.message and "+memory" in err.value.hint
        assert not (real_cgroup / "memory.max").exists()
