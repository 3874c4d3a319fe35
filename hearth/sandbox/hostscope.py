"""HEARTH_SANDBOX_CGROUP: sandboxes started in a cgroup of their own, outside the node's, so that removing the node's
container does not take them with it. A container runtime removing a container that shares the host's PID namespace
(`hostPID`) kills every process left in the container's cgroup (runc's destroy), and sandboxes inherit the node's
cgroup: in Kubernetes they would die with every node-pod restart even with hostPID. Set it to a cgroup v2 directory
of the host's hierarchy that the node can write (e.g. the host's /sys/fs/cgroup mounted at /host/cgroup:
/host/cgroup/hearth-sandboxes); each sandbox's launcher joins it before it execs (a shell writes its own PID to
`cgroup.procs`), so everything the sandbox starts is there. Their memory and CPU then count there, not in the pod:
HEARTH_SANDBOX_MEMORY_MAX (and HEARTH_SANDBOX_CPU_MAX) bound them together there, written to the cgroup's memory.max
(cpu.max) each time it is prepared."""

from __future__ import annotations

from pathlib import Path

from hearth.errors import DriverError, Hop

JOIN = 'echo $$ > "$0" && exec "$@"'  # $0: the cgroup.procs file; "$@": the launcher's argv


CPU_PERIOD = 100_000  # microseconds: cpu.max is "<quota> <period>"


def prepare(cgroup: Path | None, memory_max: int | None = None, cpu_max: float | None = None) -> None:
    """Make the cgroup directory (the kernel fills it) and write its limits; DriverError naming the setting when that
    is not possible."""
    if cgroup is None:
        return
    try:
        cgroup.mkdir(exist_ok=True)
    except OSError as exc:
        raise DriverError(
            Hop.DRIVER,
            f"HEARTH_SANDBOX_CGROUP {cgroup} cannot be made ({exc.strerror or exc})",
            "point it into a writable cgroup v2 hierarchy (the host's /sys/fs/cgroup mounted into the node), "
            "or leave it empty",
        ) from exc
    if not (cgroup / "cgroup.procs").exists():
        raise DriverError(
            Hop.DRIVER,
            f"HEARTH_SANDBOX_CGROUP {cgroup} is not a cgroup (it has no cgroup.procs)",
            "give a directory inside a mounted cgroup v2 hierarchy (e.g. /host/cgroup/hearth-sandboxes)",
        )
    if memory_max is not None:
        _limit(cgroup, "memory", "memory.max", str(memory_max), "HEARTH_SANDBOX_MEMORY_MAX")
    if cpu_max is not None:
        quota = f"{max(1000, round(cpu_max * CPU_PERIOD))} {CPU_PERIOD}"
        _limit(cgroup, "cpu", "cpu.max", quota, "HEARTH_SANDBOX_CPU_MAX")


def _limit(cgroup: Path, controller: str, name: str, value: str, setting: str) -> None:
    """Write `value` to the cgroup's `name`, enabling `controller` for the parent's children first if it is off."""
    target = cgroup / name
    try:
        if not target.exists():
            (cgroup.parent / "cgroup.subtree_control").write_text(f"+{controller}\n")
        target.write_text(f"{value}\n")
    except OSError as exc:
        raise DriverError(
            Hop.DRIVER,
            f"{setting} cannot be written to {target} ({exc.strerror or exc}): the {controller} controller is not "
            f"available to {cgroup}",
            f"enable it for the parent ({cgroup.parent}/cgroup.subtree_control: +{controller}; a cgroup v2 host with "
            f"the {controller} controller), or unset {setting} (the sandboxes are then unbounded together)",
        ) from exc


def in_scope(argv: list[str], cgroup: Path | None) -> list[str]:
    """`argv`, run from inside `cgroup` when set (same process: the PID and start time hearth records stay)."""
    if cgroup is None:
        return argv
    return ["/bin/sh", "-c", JOIN, str(cgroup / "cgroup.procs"), *argv]
