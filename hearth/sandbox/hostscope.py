"""HEARTH_SANDBOX_CGROUP: sandboxes started in a cgroup of their own, outside the node's, so that removing the node's
container does not take them with it. A container runtime removing a container that shares the host's PID namespace
(`hostPID`) kills every process left in the container's cgroup (runc's destroy), and sandboxes inherit the node's
cgroup: in Kubernetes they would die with every node-pod restart even with hostPID. Set it to a cgroup v2 directory
of the host's hierarchy that the node can write (e.g. the host's /sys/fs/cgroup mounted at /host/cgroup:
/host/cgroup/hearth-sandboxes); each sandbox's launcher joins it before it execs (a shell writes its own PID to
`cgroup.procs`), so everything the sandbox starts is there. Their memory and CPU then count there, not in the pod."""

from __future__ import annotations

from pathlib import Path

from hearth.errors import DriverError, Hop

JOIN = 'echo $$ > "$0" && exec "$@"'  # $0: the cgroup.procs file; "$@": the launcher's argv


def prepare(cgroup: Path | None) -> None:
    """Make the cgroup directory (the kernel fills it); DriverError naming the setting when that is not possible."""
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


def in_scope(argv: list[str], cgroup: Path | None) -> list[str]:
    """`argv`, run from inside `cgroup` when set (same process: the PID and start time hearth records stay)."""
    if cgroup is None:
        return argv
    return ["/bin/sh", "-c", JOIN, str(cgroup / "cgroup.procs"), *argv]
