"""A process tree: a CLI's process group and every descendant, found in /proc, and ending all of it (what a prompt's
cancel, timeout or end must leave: nothing)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

TERM_GRACE = 2.0  # s between TERM and KILL


def descendants(root: int) -> set[int]:
    """`root`'s process tree and its process group, from /proc (what a cancel must end)."""
    parent: dict[int, int] = {}
    group: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(name)
        parent[pid] = int(stat[1])
        if int(stat[2]) == root:  # pgid: the CLI runs in a session of its own
            group.add(pid)
    tree, todo = {root}, [root]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in tree:
                tree.add(child)
                todo.append(child)
    return (tree | group) & (set(parent) | {root})


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """TERM the tree, KILL what is left after TERM_GRACE; repeated so a child forked meanwhile goes too."""
    for sig, wait in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 1.0), (signal.SIGKILL, 1.0)):
        pids = descendants(proc.pid)
        if proc.poll() is not None:
            pids.discard(proc.pid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
