"""What the desktop is made of: one named recipe per service — its command line, how it tells it is ready, whether
it owns the X display — in start order. The supervisor (hearth_agent/supervisor.py) starts, watches, restarts and
stops them; nothing here starts a process.

`vnc_server: xvnc` (default): TigerVNC's Xvnc — X server and VNC server in one process, damage-based, answering a
new client at once, resizable by the viewer (SetDesktopSize) — ready when it wrote its display number to -displayfd
and its RFB port accepts → openbox → chromium. `vnc_server: x11vnc` (the previous design, kept for comparison):
Xvfb (ready at -displayfd) → openbox → x11vnc (ready when its port accepts) → chromium.
"""

from __future__ import annotations

from collections.abc import Callable

from hearth_agent.config import AgentConfig
from hearth_agent.record import dataclass  # not dataclasses: it imports inspect (hearth_agent/record.py)

CHROMIUM = "chromium"
# the flags every X server gets after its own (the display number comes back on -displayfd <fd>)
X_FLAGS = ("-nolisten", "tcp", "-noreset", "-dpi", "96")
CHROMIUM_FLAGS = (
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=Translate,MediaRouter",
    "--password-store=basic",
    "--noerrdialogs",
    "--hide-crash-restore-bubble",
    "--kiosk",  # one window filling the desktop: no tab strip, no address bar; later URLs open as its active tab
    "--test-type",  # no "unsupported command-line flag" bar (for --no-sandbox, which the sandbox user needs)
)


@dataclass(frozen=True)
class Context:
    """What a command line is made from when its service starts."""

    cfg: AgentConfig
    home: str
    display: str  # ":N" once the display server reported it
    url: str  # the page Chromium starts on
    chromium_sandbox: bool  # False: Chromium runs with --no-sandbox


@dataclass(frozen=True)
class Recipe:
    name: str
    argv: Callable[[Context], list[str]]
    displayfd: bool = False  # an X server: owns the display, ready once it wrote its number to -displayfd
    port: bool = False  # ready once the RFB port (cfg.ip:cfg.rfb_port) accepts
    quiet: bool = False  # its output is not worth the agent's log


def chromium_argv(home: str, url: str, sandboxed: bool) -> list[str]:
    unsandboxed = [] if sandboxed else ["--no-sandbox"]
    return [CHROMIUM, *CHROMIUM_FLAGS, *unsandboxed, f"--user-data-dir={home}/chromium", url]


def _xvnc(c: Context) -> list[str]:
    """One process: the X display and the RFB server on ip:rfb_port only (never loopback/other addresses: the
    sandbox's netns address is what the fabric dials); no VNC password — the gateway is the authentication."""
    width, height, depth = c.cfg.screen.split("x")
    argv = ["Xvnc", "-geometry", f"{width}x{height}", "-depth", depth, "-rfbport", str(c.cfg.rfb_port)]
    argv += ["-interface", c.cfg.ip, "-SecurityTypes", "None", "-AlwaysShared", "-AcceptSetDesktopSize"]
    argv += ["-SendCutText", "-AcceptCutText", "-SetPrimary"]
    # The classic X root pattern (as Xvfb draws it), not black: the first frame shows a desktop, not a void.
    argv += ["-retro"]
    # Only the gateway connects (from the fabric) and it is the authentication: Xvnc's blacklist of hosts with
    # many unauthenticated connections would refuse a burst of viewers of one session.
    argv += ["-BlacklistThreshold", "1000000"]
    return argv


def _xvfb(c: Context) -> list[str]:
    return ["Xvfb", "-screen", "0", c.cfg.screen, "+extension", "RANDR"]


def _x11vnc(c: Context) -> list[str]:
    argv = ["x11vnc", "-display", c.display, "-listen", c.cfg.ip, "-rfbport", str(c.cfg.rfb_port), "-nopw"]
    return [*argv, "-forever", "-shared", "-noxdamage", "-nonap", "-quiet", "-norc", "-noipv6"]


def _chromium(c: Context) -> list[str]:
    # Normal priority: the browser is what the person types their password into (SCHED_IDLE was tried for boot
    # storms; it did not shorten them and it froze browsers whenever anything else wanted the CPU).
    return chromium_argv(c.home, c.url, c.chromium_sandbox)


XVNC = Recipe("xvnc", _xvnc, displayfd=True, port=True)
XVFB = Recipe("xvfb", _xvfb, displayfd=True)
OPENBOX = Recipe("openbox", lambda _c: ["openbox"], quiet=True)
X11VNC = Recipe("x11vnc", _x11vnc, port=True)
BROWSER = Recipe(CHROMIUM, _chromium, quiet=True)
DESKTOPS: dict[str, tuple[Recipe, ...]] = {
    "xvnc": (XVNC, OPENBOX, BROWSER),
    "x11vnc": (XVFB, OPENBOX, X11VNC, BROWSER),
}


def desktop(cfg: AgentConfig) -> tuple[Recipe, ...]:
    """The services of this sandbox in start order; the first owns the display. None without a desktop (a direct
    or CLI sandbox: the agent only); no Chromium when the config turns it off."""
    if not cfg.desktop:
        return ()
    return tuple(r for r in DESKTOPS[cfg.vnc_server] if r.name != CHROMIUM or cfg.chromium)


def chromium_sandbox_available() -> bool:
    """Chromium's own sandbox needs unprivileged user namespaces here (Debian's chromium ships no setuid helper);
    inside bubblewrap's user namespace a nested one works as long as the kernel allows any."""
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) <= 0:
                return False
    except (OSError, ValueError):
        return False
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:  # Debian's switch, absent upstream
            return f.read().strip() != "0"
    except OSError:
        return True
