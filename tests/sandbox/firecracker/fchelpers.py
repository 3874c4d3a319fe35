"""Helpers shared by the Firecracker driver tests (plain functions; fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hearth.config import Settings, load_settings
from tests import nsnames

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_firecracker.py"
FAKE_JAILER = HERE / "fake_jailer.py"


def new_settings(tmp_path: Path) -> Settings:
    return load_settings(
        {"HEARTH_FABRIC_NETNS": nsnames.new(), "HEARTH_DATA_DIR": str(tmp_path / "data")},
        env_file=None,
    )


@dataclass
class Fake:
    """The stand-in binary: `binary` is a script named `firecracker`; `record` lists the requests it received."""

    binary: Path
    record: Path
    pidfile: Path

    def requests(self) -> list[dict[str, object]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def pid(self) -> int | None:
        return int(self.pidfile.read_text()) if self.pidfile.exists() else None


def pid_running(pid: int | None) -> bool:
    """Whether `pid` exists at all (a zombie counts: it was not reaped)."""
    return pid is not None and os.path.exists(f"/proc/{pid}")
