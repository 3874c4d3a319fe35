"""`hearth demo` signs someone in: the README's first command, run as a subprocess end to end.

Real controller (throwaway data dir and fabric namespace), the example provider on the internet stand-in (reached
through the fabric's DNS forwarder, egress and HEARTH_EXTRA_CA_CERTS) or on the fabric's bridge address, a real
browser sandbox, and the person played by Debian's Chromium through Playwright clicking on the viewer page
(pointer and keys through noVNC); the credentials read back by the CLI sandbox's agent as a digest. Asserted: the
steps in order, what the provider saw, the delivered file equal to the sealed copy, no secret printed, and nothing
left behind (namespaces, data dir, processes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hearth.cli.demo_person import CHROMIUM
from hearth.cli.demo_signin import demo_env
from hearth.fabric import netlink

REPO = Path(__file__).resolve().parents[2]
STATES = ["starting", "ready", "awaiting_user", "credentials_captured", "delivered", "completed"]


def hearth(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")} | {"HEARTH_READY_TIMEOUT": "90"}
    return subprocess.run(
        [sys.executable, "-m", "hearth", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,  # no terminal: the demo drives the page itself
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.sqlite_pass
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh")
@pytest.mark.parametrize("via", ["internet", "fabric"])
def test_demo_signs_someone_in_and_leaves_nothing(via: str) -> None:
    """`internet` (the default: the README's command): the provider on the internet stand-in, its name resolved by
    the fabric's DNS forwarder, its page over the egress and TLS. `fabric`: the example IdP on the bridge address."""
    run = hearth("demo", "--auto", *(["--via", via] if via != "internet" else []), timeout=600)
    out = run.stdout
    assert run.returncode == 0, (out, run.stderr[-4000:])
    m = re.search(r"fabric netns=(\S+)\s+data dir=(\S+)", out)
    assert m is not None, out
    fabric, data_dir = m.group(1), m.group(2)
    assert fabric.startswith("hearth-demo") and data_dir.startswith("/var/tmp/hearth-demo-"), (fabric, data_dir)
    inet = re.search(r"on the internet stand-in \(namespaces (\S+)-up, ", out)
    assert (inet is not None) == (via == "internet"), out

    # The steps, in order.
    steps = [re.escape(s) for s in ("1. controller on", "2. provider example", "3. session", "4. in demo-user's")]
    steps += [re.escape("5. cleaning up"), re.escape("left behind: nothing")]
    assert re.search(".*".join(steps), out, re.S), out
    shown = re.findall(r"^\s+\d+\.\d+s\s+(\w+)", out, re.M)
    assert shown == STATES, out
    viewer = re.search(r"^\s+(http://127\.0\.0\.1:\d+/api/auth/session/[0-9a-f-]+/novnc\?token=\S+)$", out, re.M)
    assert viewer is not None, out
    issuer = "https://idp.example.com" if via == "internet" else "http://192.168.100.1:9400"
    assert f"awaiting_user  {issuer}/authorize" in out, out

    # The person signed in on the provider's page in the viewer, and the provider saw it happen.
    button = "Authorize" if via == "internet" else "Approve"
    said = rf"the person saw the provider's page drawn on the \d+x\d+ desktop in the viewer, clicked {button} on it"
    assert re.search(said, out), out
    assert "the viewer page then said 'You are signed in to Example' (completed)" in out, out
    assert "its sign-in page loaded by Chromium, approved, tokens issued to the CLI (code + PKCE)" in out, out
    if via == "internet":  # through the fabric's DNS forwarder and egress (masqueraded to the host's side)
        assert re.search(r"its name asked [1-9]\d* times of its DNS \(by the fabric's forwarder\)", out), out
        assert "every request from 192.0.2.1 (the host's side: the fabric's egress)" in out, out

    # The credential in the CLI sandbox, read by its agent: a digest equal to the vault's sealed copy, mode 0600.
    line = re.search(
        r"^\s+\.example/credentials\.json\s+(\d+) bytes\s+mode (\d+)\s+sha256 ([0-9a-f]{16})…\s+(.*)$", out, re.M
    )
    assert line is not None, out
    assert int(line.group(1)) > 0 and line.group(2) == "0600" and line.group(4) == "= the vault’s sealed copy"
    assert not re.search(r"ex-(at|rt)-", out + run.stderr), "a token was printed"

    # Nothing left: the demo's namespaces (and the stand-in's), its data dir, any process of it.
    mine = [fabric] + ([inet.group(1)] if inet else [])
    assert not [n for n in netlink.list_netns() for p in mine if n == p or n.startswith(f"{p}-")]
    assert not Path(data_dir).exists()
    for name in [data_dir, *mine]:
        assert not processes_mentioning(name), name


def test_auto_is_refused_for_a_real_provider() -> None:
    """A person signs in to a real provider: --auto (or no terminal) with one is refused before anything starts."""
    run = hearth("demo", "--provider", "claude_code", "--auto", timeout=60)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "--auto runs the example provider only" in run.stderr


def test_only_some_settings_of_this_host_are_passed() -> None:
    """The demo's controller is throwaway: this host's data dir, store, keys and fabric are never its own; its driver
    and screen are; its internet settings only for a real provider (the example's internet is the stand-in)."""
    host = {
        "HEARTH_EGRESS": "true",
        "HEARTH_EGRESS_PROXY": "http://u:p@proxy:{port}",
        "HEARTH_SCREEN": "1024x768x24",
        "HEARTH_DRIVER": "netns",
        "HEARTH_DATA_DIR": "/var/lib/hearth",
        "HEARTH_DATABASE_URL": "postgresql+psycopg://u:p@db/hearth",
        "HEARTH_API_KEYS": "secret",
        "HEARTH_FABRIC_NETNS": "hearth",
        "PATH": "/usr/bin",
    }
    mine = {"HEARTH_SCREEN": "1024x768x24", "HEARTH_DRIVER": "netns"}
    assert demo_env("example", host, None) == mine
    internet = {"HEARTH_EGRESS": "true", "HEARTH_EGRESS_PROXY": "http://u:p@proxy:{port}"}
    assert demo_env("claude_code", host, None) == mine | internet
