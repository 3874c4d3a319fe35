"""The one builder of a sandbox's spec from the settings (pure): what the sandbox manager boots
(`SandboxManager.spec`) and what `hearth sandbox plan` shows are built here, so the two cannot differ.

`egress` is what the spec carries of the egress settings: the manager's `hearth.proxy.plan.EgressPlan` is one, and
`egress_for(settings)` makes one without a store (for the plan command)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hearth.config import Settings
from hearth.config.proxy import egress_of
from hearth.fabric.slot import Slot
from hearth.sandbox.base import SandboxSpec


class EgressView(Protocol):
    """The egress settings a spec carries."""

    @property
    def local_proxy(self) -> bool: ...  # HEARTH_EGRESS_PROXY set: Chromium and the CLIs use the agent's local proxy

    @property
    def extra_ca(self) -> str: ...  # PEM of HEARTH_EXTRA_CA_CERTS ("": none)

    @property
    def allow(self) -> tuple[str, ...]: ...  # HEARTH_EGRESS_ALLOW, as CIDR strings


@dataclass(frozen=True)
class EgressSettings:
    local_proxy: bool
    extra_ca: str
    allow: tuple[str, ...]


def egress_for(settings: Settings) -> EgressSettings:
    """The egress settings a spec carries, parsed from `settings` (parse once, not per spec)."""
    parsed = egress_of(settings.egress_proxy, settings.egress_proxy_ports, settings.extra_ca_certs)
    return EgressSettings(parsed.proxy is not None, parsed.extra_ca, tuple(str(n) for n in settings.egress_allow))


def workdir_of(settings: Settings, slot: Slot) -> Path:
    """A sandbox's work directory: derived from its slot, so destroying needs nothing else."""
    return settings.data_dir / "sandboxes" / slot.netns


def build(
    settings: Settings,
    egress: EgressView,
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
        local_proxy=egress.local_proxy,
        egress_proxy=egress_proxy,
        extra_ca=egress.extra_ca,
        egress_allow=egress.allow,
    )
