"""The one builder of a sandbox's spec from the settings (pure): what the sandbox manager boots
(`SandboxManager.spec`) and what `hearth sandbox plan` shows are built here, so the two cannot differ."""

from __future__ import annotations

from pathlib import Path

from hearth.config import Settings
from hearth.config.proxy import Egress, egress_of
from hearth.fabric.slot import Slot
from hearth.sandbox.base import SandboxSpec


def egress_for(settings: Settings) -> Egress:
    """The parsed proxy and trust settings a spec carries (parse once per controller, not per spec)."""
    return egress_of(settings.egress_proxy, settings.egress_proxy_ports, settings.extra_ca_certs)


def workdir_of(settings: Settings, slot: Slot) -> Path:
    """A sandbox's work directory: derived from its slot, so destroying needs nothing else."""
    return settings.data_dir / "sandboxes" / slot.netns


def build(
    settings: Settings,
    egress: Egress,
    owner: str,
    slot: Slot,
    *,
    secret: str,
    desktop: bool = True,
    providers: tuple[str, ...] = (),
    home: Path | None = None,
    egress_proxy: str = "",
) -> SandboxSpec:
    """The spec of `owner`'s sandbox on `slot`: a desktop session's by default; `desktop=False` for one without a
    display (direct sign-in, CLI sandboxes), `home` for a persistent home, `providers` the digests its agent may run,
    `egress_proxy` the user's upstream proxy URL ("" until the sandbox is someone's)."""
    s = settings
    return SandboxSpec(
        session_id=owner,
        slot=slot,
        workdir=workdir_of(s, slot),
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
        local_proxy=egress.proxy is not None,
        egress_proxy=egress_proxy,
        extra_ca=egress.extra_ca,
        egress_allow=tuple(str(n) for n in s.egress_allow),
    )
