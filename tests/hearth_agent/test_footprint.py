"""What an agent does not import (each module an agent imports is memory in every sandbox, issue 25): argparse for
its two options, asyncio while the sandbox has no local egress proxy, urllib.request/ssl/hashlib on a direct
sign-in's path; and what the example CLI does not import while it waits for the person's code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from hearth.guest import packages as guestpkg
from hearth.providers import registry
from hearth_agent.contract.signin import login_body

SECRET = "footprint-secret-0123456789abcdef"
DEFS = Path(registry.__file__).parent / "defs"


def loaded(code: str, *modules: str) -> list[str]:
    """The `modules` in sys.modules after `code` runs in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().splitlines()[-1].split(",") if m] if out.strip() else []


def test_the_agent_parses_its_options_without_argparse() -> None:
    code = "from hearth_agent.__main__ import parse_args\nparse_args(['--config', 'x', '--notify-fd', '3'])"
    assert loaded(code, "argparse", "hearth_agent.__main__") == ["hearth_agent.__main__"]


def test_no_local_proxy_no_asyncio() -> None:
    code = "from hearth_agent.egress import Egress\ne = Egress({}, '/nonexistent')\ne.start()\ne.stop()\nprint(e.env())"
    assert loaded(code, "asyncio", "hearth_agent.egress") == ["hearth_agent.egress"]


def test_a_local_proxy_imports_it_when_it_is_configured() -> None:
    code = "from hearth_agent.egress import Egress\nEgress({'egress_proxy': {'allow': ['10.0.0.0/8']}}, '/x')"
    assert loaded(code, "hearth_agent.egressproxy") == ["hearth_agent.egressproxy"]


def test_the_api_server_does_without_http_server() -> None:
    assert loaded("import hearth_agent.server", "http.server", "html", "mimetypes") == []


def test_prompt_runs_are_imported_at_the_first_prompt() -> None:
    assert loaded("import hearth_agent.promptrun", "hearth_agent.promptproc") == []
    assert loaded("import hearth_agent.promptrun as p\np.Run", "hearth_agent.promptproc") == ["hearth_agent.promptproc"]


# What a direct sign-in sandbox holds while the person has the URL (issue 25: ≤ 20 MiB per sandbox at 1,000): the
# agent with its API and sign-in extensions, a paste_code run, a push to the controller; the example CLI waiting for
# the code. Each module named here was megabytes across 1,000 sandboxes; none may come back unnoticed.
AGENT_HEAVY = (
    *("urllib.request", "http.client", "email", "ssl", "_ssl", "hashlib", "_hashlib", "hmac", "secrets", "random"),
    *("wcwidth.textwrap", "wcwidth.grapheme", "dataclasses", "inspect", "shutil", "queue", "concurrent.futures"),
)
# The agent's main in the probe's main thread; a thread waits for its `listening`, starts a paste_code sign-in of the
# example CLI (its controller pushes fail: nothing listens on port 9) and stops the agent: what it imported stays.
AGENT_DIRECT = """
import json, os, signal, sys, threading
from hearth_agent import __main__ as agent, httppost
r, w = os.pipe()
os.set_inheritable(w, True)
statuses = []

def sign_in():
    os.read(r, 100)
    body = json.dumps(LOGIN).encode()
    head = {"Authorization": "Bearer " + SECRET, "Content-Type": "application/json"}
    statuses.append(httppost.post("http", "127.0.0.1", PORT, "/v1/login", head, body, 10))
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=sign_in, daemon=True).start()
code = agent.main(["--config", CONFIG, "--notify-fd", str(w)])
assert code == 0 and statuses == [202], (code, statuses)
"""
CLI_HEAVY = ("typing", "re", "urllib", "urllib.parse", "base64", "hashlib", "secrets", "collections")
CLI_WAITING = """
import hearth_example.cli as c
verifier, challenge = c._pkce()
c._authorize_url("http://192.168.100.1:9400", "http://192.168.100.1:9400/code", c._token(16), challenge)
"""


def guest_loaded(tmp_path: Path, code: str, site: bool, *modules: str) -> list[str]:
    """`loaded`, by the interpreter and import path a sandbox has: the system python3 (`-P -S` for the agent, as
    hearth/sandbox/netns.py starts it; with its site module for a CLI) over a guest copy of the packages."""
    guest = guestpkg.install(tmp_path / "guest", guestpkg.packages(True))
    python = guestpkg.GUEST_PYTHON if os.path.exists(guestpkg.GUEST_PYTHON) else sys.executable
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    argv = [python, "-P", *([] if site else ["-S"]), "-c", probe]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(guest), "LANG": "C.UTF-8", "HOME": str(tmp_path / "home")}
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    return [m for m in out.strip().splitlines()[-1].split(",") if m] if out.strip() else []


def test_a_direct_sign_in_agent_does_without_urllib_request_ssl_hashlib_and_most_of_wcwidth(tmp_path: Path) -> None:
    port = socket.create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    cfg = {"ip": "127.0.0.1", "agent_port": free, "secret": SECRET, "desktop": False, "session_id": "s"}
    (tmp_path / "agent.json").write_text(json.dumps(cfg | {"callback": "http://127.0.0.1:9"}))
    (tmp_path / "home").mkdir()
    login = login_body(
        registry.load(DEFS)["example"].agent_document(),
        "paste_code",
        60,
        {"HEARTH_EXAMPLE_ISSUER": "http://127.0.0.1:9"},
    )
    code = f"PORT, SECRET, CONFIG, LOGIN = {free}, {SECRET!r}, {str(tmp_path / 'agent.json')!r}, {login!r}\n"
    code += AGENT_DIRECT
    heavy = guest_loaded(tmp_path, code, False, *AGENT_HEAVY, "hearth_agent.loginrun", "wcwidth", "pyte")
    assert heavy == ["hearth_agent.loginrun", "wcwidth", "pyte"]


def test_the_example_cli_waits_for_the_code_holding_almost_nothing(tmp_path: Path) -> None:
    assert guest_loaded(tmp_path, CLI_WAITING, True, *CLI_HEAVY, "hearth_example.cli") == ["hearth_example.cli"]
