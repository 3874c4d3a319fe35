"""The driver seam: a Protocol of three verbs (start, destroy, alive), what a driver offers, and the spec it boots.

Readiness (agent, VNC, RFB) is checked by the sandbox manager, not here. The drivers (netns, qemu, firecracker, the
tests' loopback) are siblings that each satisfy `Driver`; each `start` is a list of named steps run by the one runner
in `hearth.sandbox.steps`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from hearth.errors import DriverError, Hop
from hearth.fabric.slot import Slot

StageMark = Callable[[str], None]
"""Called by a driver when a boot stage completes (e.g. "namespace", "process"); the service times it."""


def no_marks(_stage: str) -> None:
    """The StageMark of a start nobody times (a pooled sandbox's): the one no-op, here below its callers."""


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to create — or, after a crash, to destroy — one sandbox. Names derive from the slot."""

    session_id: str
    slot: Slot
    workdir: Path  # per-sandbox directory (logs, home, overlay); derived from the slot
    secret: str = field(repr=False)  # per-sandbox agent secret, never logged
    screen: str = "1280x800x24"
    start_url: str = "about:blank"
    chromium: bool = True
    browser_on_request: bool = False  # Chromium waits for POST /v1/browser (hearth/session/browser.py) or a page
    rfb_port: int = 5900
    agent_port: int = 8080
    desktop: bool = True  # False: a CLI sandbox (agent only, no display)
    vnc_server: str = "xvnc"  # "xvnc" (one process) or "x11vnc" (Xvfb + x11vnc), see hearth_agent/supervisor.py
    home: Path | None = None  # persistent home kept across destroy (CLI sandboxes); None: inside workdir
    providers: tuple[str, ...] = ()  # digests of the provider definitions its agent may run (none: no logins)
    # HEARTH_EGRESS_PROXY (hearth/proxy): Chromium and the CLIs go through the agent's local proxy, which chains to
    # `egress_proxy` — the user's port, with the proxy's credentials: in the sealed agent config only ("" while the
    # sandbox belongs to nobody yet: a pooled one learns it when personalised)
    local_proxy: bool = False
    egress_proxy: str = field(default="", repr=False)
    extra_ca: str = ""  # PEM of HEARTH_EXTRA_CA_CERTS: trusted by its Chromium and CLIs
    egress_allow: tuple[str, ...] = ()  # HEARTH_EGRESS_ALLOW (CIDRs): the local proxy reaches these private ranges


@dataclass
class SandboxInfo:
    """What the driver reports after a successful start."""

    pid: int
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Offers:
    """What a driver offers, so callers never test isinstance or compare driver names."""

    console_tail: bool = False  # `console_tail(spec, limit)`: the guest's serial console (VM drivers)
    persistent_home: bool = False  # `spec.home` is bound into the sandbox and survives destroy (CLI sandboxes)
    ports: tuple[str, ...] = ("veth",)  # the fabric port kinds it attaches (veth, tap)
    guest_netns: bool = False  # the guest is a network namespace of its own (`slot.netns`), inspectable from here
    controller_agent: bool = False  # runs this controller's agent (not the one baked into the guest image)


class Driver(Protocol):
    """What the sandbox manager needs of a driver. `name` and `offers` are class attributes."""

    name: ClassVar[str]
    offers: ClassVar[Offers] = Offers()

    def console_tail(self, spec: SandboxSpec, limit: int) -> str:
        """The tail of the guest's serial console; only drivers whose `offers.console_tail` is set have one (callers ask
        `offers` first; a driver without one raises this DriverError)."""
        raise DriverError(Hop.DRIVER, f"the {self.name} driver has no guest console", "ask `offers.console_tail` first")

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        """Create and boot the sandbox. On any failure, undo everything acquired, then raise a HearthError."""
        ...

    async def destroy(self, spec: SandboxSpec) -> None:
        """Stop the sandbox and remove all it holds (processes, links, namespaces, files). Idempotent."""
        ...

    async def alive(self, spec: SandboxSpec) -> bool:
        """Whether the sandbox's top process still runs."""
        ...
