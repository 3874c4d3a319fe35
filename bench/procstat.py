"""What /proc says about processes and this machine, for the benches: CPU ticks, smaps_rollup fields, MemAvailable,
the members of network namespaces, a short command line. Each read of a process that is gone reads as 0 (or "?")."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")  # clock ticks per second (/proc/<pid>/stat's CPU times)


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds_of(pids: Iterable[int]) -> float:
    """CPU seconds `pids` used so far, together."""
    return sum(cpu_ticks(p) for p in pids) / TICK


def smaps_kib(pid: int, field: str = "Pss") -> int:
    """One field of /proc/<pid>/smaps_rollup (Pss, Rss, Private_Dirty, …), KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def netns_members(names: list[str]) -> dict[str, list[int]]:
    """The PIDs in each of the named network namespaces (one pass over /proc, whatever the count)."""
    by_inode: dict[int, str] = {}
    for name in names:
        try:
            by_inode[os.stat(f"/run/netns/{name}").st_ino] = name
        except OSError:
            continue
    out: dict[str, list[int]] = {n: [] for n in by_inode.values()}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:
            continue
        if ino in by_inode:
            out[by_inode[ino]].append(int(entry.name))
    return out


def describe(pid: int) -> str:
    """The first words of `pid`'s command line (for a report)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return " ".join(a.decode(errors="replace") for a in argv[:4] if a)[:70]
    except OSError:
        return "?"
