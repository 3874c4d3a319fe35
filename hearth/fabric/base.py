"""The fabric seam: bring it up, take it down, say what is there (three methods)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class FabricStatus:
    netns: str
    netns_exists: bool = False
    bridge_exists: bool = False
    bridge_up: bool = False
    bridge_addresses: list[str] = field(default_factory=list)
    forwarding: bool = False
    nft_table: bool = False
    masquerade: bool = False
    egress: bool = False
    uplink: bool = False
    ports: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class FabricBackend(ABC):
    @abstractmethod
    async def up(self) -> None:
        """Create or repair the fabric. Idempotent; a half-built fabric is rolled back."""

    @abstractmethod
    async def down(self, force: bool = False) -> None:
        """Remove the fabric. Idempotent; refuses while sandbox ports are attached unless `force`."""

    @abstractmethod
    async def status(self) -> FabricStatus:
        """What exists, read-only, with a fix named for each problem."""
