"""Whether this process's exit would take its sandboxes with it: PID 1 of a PID namespace (a container without the
host's PID namespace). When PID 1 of a namespace exits, the kernel kills every other process in it — every sandbox
the node started — so a node pod's restart (upgrade, liveness failure, eviction) would end every session on the host
instead of leaving the sandboxes for the next pod to adopt. The fix is the host's PID namespace (`hostPID: true`)."""

from __future__ import annotations

import os

WARNING = (
    "this process is PID 1 of its PID namespace: when it exits, the kernel kills every process in that namespace — "
    "every sandbox with it, so they cannot outlive a restart to be adopted; run the node in the host's PID namespace "
    "(Kubernetes: hostPID: true in the node DaemonSet; docker/podman: --pid=host)"
)


def sandboxes_die_with_me(pid: int | None = None) -> str | None:
    """The warning naming the fix when this process is PID 1 of its PID namespace, else None."""
    return WARNING if (os.getpid() if pid is None else pid) == 1 else None
