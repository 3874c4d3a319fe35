"""The desktop's service recipes (hearth_agent/recipes.py): what starts, in which order, with which command line
and readiness gate. No process starts here; the supervisor running them is tested in test_agent.py and
test_wakeup.py, the real desktop in the sandbox tests."""

from __future__ import annotations

from typing import Any

from hearth_agent.config import AgentConfig, parse_config
from hearth_agent.recipes import CHROMIUM_FLAGS, Context, chromium_argv, desktop
from hearth_agent.supervisor import Supervisor

SECRET = "s3cret-" + "x" * 32


def config(**kw: Any) -> AgentConfig:
    return parse_config({"ip": "10.9.8.7", "secret": SECRET, "rfb_port": 5999, "screen": "1024x768x16", **kw})


def context(cfg: AgentConfig, display: str = ":3", sandboxed: bool = True) -> Context:
    return Context(cfg, "/home/u", display, "https://start.test/", sandboxed)


def test_the_desktops_in_start_order_the_first_owning_the_display() -> None:
    assert [r.name for r in desktop(config())] == ["xvnc", "openbox", "chromium"]
    assert [r.name for r in desktop(config(vnc_server="x11vnc"))] == ["xvfb", "openbox", "x11vnc", "chromium"]
    assert [r.name for r in desktop(config(chromium=False))] == ["xvnc", "openbox"]
    assert desktop(config(desktop=False)) == ()
    gates = {r.name: (r.displayfd, r.port) for r in desktop(config(vnc_server="x11vnc")) + desktop(config())}
    assert gates == {
        "xvnc": (True, True),  # display and RFB in one process: both gates
        "xvfb": (True, False),
        "openbox": (False, False),
        "x11vnc": (False, True),
        "chromium": (False, False),
    }
    sup = Supervisor(config(vnc_server="x11vnc", chromium=False))
    assert sup.display_service == "xvfb" and list(sup.services) == ["xvfb", "openbox", "x11vnc"]


def test_command_lines_come_from_the_config_and_the_moment() -> None:
    cfg = config()
    xvnc, openbox, browser = desktop(cfg)
    argv = xvnc.argv(context(cfg))
    assert argv[:7] == ["Xvnc", "-geometry", "1024x768", "-depth", "16", "-rfbport", "5999"]
    assert argv[argv.index("-interface") + 1] == "10.9.8.7" and "-SecurityTypes" in argv and "-retro" in argv
    assert openbox.argv(context(cfg)) == ["openbox"] and openbox.quiet
    assert browser.argv(context(cfg)) == chromium_argv("/home/u", "https://start.test/", True)
    xvfb, _, x11vnc, _ = desktop(config(vnc_server="x11vnc"))
    assert xvfb.argv(context(cfg)) == ["Xvfb", "-screen", "0", "1024x768x16", "+extension", "RANDR"]
    vnc = x11vnc.argv(context(cfg, display=":7"))
    assert vnc[:3] == ["x11vnc", "-display", ":7"] and vnc[vnc.index("-listen") + 1] == "10.9.8.7"


def test_chromium_runs_without_its_sandbox_only_where_user_namespaces_are_missing() -> None:
    sandboxed = chromium_argv("/h", "about:blank", True)
    bare = chromium_argv("/h", "about:blank", False)
    assert sandboxed == ["chromium", *CHROMIUM_FLAGS, "--user-data-dir=/h/chromium", "about:blank"]
    assert bare == ["chromium", *CHROMIUM_FLAGS, "--no-sandbox", "--user-data-dir=/h/chromium", "about:blank"]
    assert "--kiosk" in sandboxed
