"""The guest's serial console (`<workdir>/console.log`): its tail for diagnostics, and boot markers to wait for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hearth.guest import files as guest

CONSOLE = "console.log"


def console_tail(workdir: Path, limit: int = 8192) -> str:
    """The last `limit` bytes of a sandbox's serial console ("" when there is none)."""
    path = workdir / CONSOLE
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    if size > limit and "\n" in text:
        text = text.split("\n", 1)[1]  # drop the partial first line
    return text


@dataclass
class ConsoleWatch:
    """Incremental reader of console.log: new complete lines since the last call."""

    path: Path
    offset: int = 0
    _partial: bytes = b""
    seen: list[str] = field(default_factory=list)

    def poll(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        buf = self._partial + data
        *lines, self._partial = buf.split(b"\n")
        out = [ln.decode(errors="replace").rstrip("\r") for ln in lines]
        self.seen += out
        return out


def fatal_line(lines: list[str]) -> str | None:
    """The first line saying the guest cannot boot (kernel panic, our init's FATAL), if any."""
    for line in lines:
        if any(m in line for m in guest.FATAL_MARKERS):
            return line.strip()
    return None
