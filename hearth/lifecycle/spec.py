"""The one builder of a sandbox's spec (pure): what every driver boots, from the settings and the egress plan."""

from __future__ import annotations

from pathlib import Path

from hearth.config import Settings
from hearth.fabric.slot import Slot
from hearth.proxy.plan import EgressPlan
from hearth.sandbox.base import SandboxSpec


def build(
    s: Settings,
    egress: EgressPlan,
    owner: str,
    slot: Slot,
    *,
    secret: str,
    desktop: bool = True,
    providers: tuple[str, ...] = (),
    home: Path | None = None,
    egress_proxy: str = "",
) -> SandboxSpec:
    """The spec of `owner`'s sandbox on `slot` with agent secret `secret` (empty for one only destroyed: that needs
    only the slot)."""
    return SandboxSpec(
        session_id=owner,
        slot=slot,
        workdir=s.data_dir / "sandboxes" / slot.netns,
        secret=secret,
        screen=s.screen,
        start_url=s.start_url,
        chromium=s.chromium and desktop,
        browser_on_request=s.browser_start == "queued",
        rfb_port=s.rfb_port,
        agent_port=s.agent_port,
        desktop=desktop,
        vnc_server=s.vnc_server,
        home=home,
        providers=providers,
        local_proxy=egress.local_proxy,
        egress_proxy=egress_proxy,
        extra_ca=egress.extra_ca,
        egress_allow=egress.allow,
    )
