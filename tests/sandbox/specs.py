"""The SandboxSpec of slot `index` of a test fabric, as the session service would compute it."""

from __future__ import annotations

import secrets
from typing import Any

from hearth.config import Settings
from hearth.fabric.slot import Slot, slot_for
from hearth.sandbox.base import SandboxSpec


def slot_of(settings: Settings, index: int = 0) -> Slot:
    return slot_for(settings.fabric_netns, settings.internal_network, settings.bridge_ip, settings.ip_pool_start, index)


def spec_for(settings: Settings, index: int = 0, **kw: Any) -> SandboxSpec:
    """A fresh session id and secret on every call; `kw` sets the other SandboxSpec fields (chromium, desktop…)."""
    slot = slot_of(settings, index)
    return SandboxSpec(
        session_id=f"test-{index}-{secrets.token_hex(3)}",
        slot=slot,
        workdir=settings.data_dir / "sandboxes" / slot.netns,
        secret=f"SECRET-{secrets.token_urlsafe(24)}",
        **kw,
    )
