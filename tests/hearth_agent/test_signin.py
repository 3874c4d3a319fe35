"""The agent's sign-in routes on loopback, with real processes: the example IdP (code + PKCE), the example CLI in a
PTY, the BROWSER hook, a stand-in for the controller's callback endpoint, and the agent's HTTP server.

Chromium is replaced here by a scripted "browser" (a Supervisor subclass overriding only `open_url`) because these
are unit-level tests of the agent; the end-to-end test with Chromium in a real sandbox is
tests/signin/test_flow_e2e.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import stat
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hearth_agent.config import parse_config
from hearth_agent.contract.redaction import redact, url_summary
from hearth_agent.providerdef import definition_digest, parse_provider, unescape
from hearth_agent.server import AgentServer
from hearth_agent.signin import SignIn, register
from hearth_agent.supervisor import Supervisor
from hearth_example.idp import IdpServer, IdpState
from tests.waits import eventually_sync

REPO = Path(__file__).resolve().parents[2]
SECRET = "agent-secret-0123456789abcdef"
SESSION = "sess-1234"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---- the controller's callback endpoint (stand-in) --------------------------------------------------------------
@dataclass
class Controller:
    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    credentials: list[dict[str, Any]] = field(default_factory=list)
    signin: list[dict[str, Any]] = field(default_factory=list)  # what the person must see (full URL, codes)
    auth_seen: list[str] = field(default_factory=list)
    credential_attempts: int = 0
    fail_credentials: int = 0  # answer the first N credential pushes with 503

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]


@pytest.fixture
def controller() -> Iterator[Controller]:
    ctl = Controller()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            auth = self.headers.get("Authorization", "")
            m = re.fullmatch(r"/agent/v1/sessions/([^/]+)/(events|credentials|signin)", self.path)
            with lock:
                ctl.auth_seen.append(auth)
                code = 200
                if auth != f"Bearer {SECRET}":
                    code = 401
                elif m is None or m.group(1) != SESSION:
                    code = 404
                elif m.group(2) == "events":
                    ctl.events.append(body)
                elif m.group(2) == "signin":
                    ctl.signin.append(body)
                else:
                    ctl.credential_attempts += 1
                    if ctl.credential_attempts <= ctl.fail_credentials:
                        code = 503
                    else:
                        ctl.credentials.append(body)
            raw = json.dumps({"ok": code == 200}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    ctl.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield ctl
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def idp() -> Iterator[tuple[str, IdpState]]:
    state = IdpState(auto_approve=True)
    server = IdpServer(("127.0.0.1", 0), state)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


# ---- the agent with a scripted browser ---------------------------------------------------------------------------
class ScriptedBrowser(Supervisor):
    """Instead of Chromium: load the consent page, submit its form (/approve) and follow the redirect to the CLI's
    localhost callback — what the example IdP's auto-approve script does in Chromium. `follow=False` only records."""

    follow = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: list[str] = []

    def open_url(self, url: str) -> None:
        self.opened.append(url)
        if not self.follow:
            return
        with NO_PROXY.open(url, timeout=10) as resp:
            page = resp.read().decode()
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
        base = url.split("/authorize")[0]

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: Any, **k: Any) -> None:
                return None

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
        try:
            opener.open(base + "/approve", data=urllib.parse.urlencode(fields).encode(), timeout=10)
        except urllib.error.HTTPError as exc:
            location = exc.headers["Location"]
            exc.close()
            with NO_PROXY.open(location, timeout=10) as resp:
                resp.read()


@dataclass
class Agent:
    url: str
    home: Path
    browser: ScriptedBrowser
    signin: SignIn
    controller: Controller

    def call(self, method: str, path: str, body: Any = None, secret: str = SECRET) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {secret}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with NO_PROXY.open(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    def status(self) -> dict[str, Any]:
        code, out = self.call("GET", "/v1/login")
        assert code == 200
        assert isinstance(out, dict)
        return out

    def finished(self) -> dict[str, Any]:
        out: dict[str, Any] = eventually_sync(
            lambda: (s := self.status())["state"] in ("captured", "failed") and s, 30, "login end"
        )
        return out


@pytest.fixture
def agent(tmp_path: Path, controller: Controller, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    hook = tmp_path / "browser_hook.py"  # installed executable, as the sandbox's guest package does
    shutil.copy(REPO / "hearth_agent" / "browser_hook.py", hook)
    hook.chmod(0o755)
    monkeypatch.setenv("BROWSER", str(hook))
    cfg = parse_config(
        {"ip": "127.0.0.1", "secret": SECRET, "session_id": SESSION, "callback": controller.url, "desktop": True}
    )
    browser = ScriptedBrowser(cfg, home=str(home))  # its desktop services are never started here
    server = AgentServer(("127.0.0.1", 0), cfg.identity, browser.health)
    signin = register(server, browser, cfg)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield Agent(f"http://127.0.0.1:{server.server_address[1]}", home, browser, signin, controller)
    finally:
        signin.shutdown()
        server.shutdown()
        server.server_close()


@pytest.fixture
def agent_log() -> Iterator[list[str]]:
    """Every record of the agent's logger, message and extra fields."""
    lines: list[str] = []
    std = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            extra = {k: v for k, v in vars(record).items() if k not in std}
            lines.append(json.dumps({"msg": record.getMessage(), **extra}, default=str))

    logger = logging.getLogger("hearth_agent")
    handler, level = Capture(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def example_provider() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO / "hearth" / "providers" / "defs" / "example.json").read_text())
    return data


def login_body(issuer: str) -> dict[str, Any]:
    # PYTHONPATH: the sandbox sets it to /opt/hearth for the agent; here the example CLI is imported from the repo
    return {"provider": example_provider(), "env": {"HEARTH_EXAMPLE_ISSUER": issuer, "PYTHONPATH": str(REPO)}}


def fake_provider(script: str, timeout: float = 60, flow: str = "loopback", **extra: Any) -> dict[str, Any]:
    """A definition whose one flow runs `script` (extra keys go into the flow: prompts, url_must_contain, …)."""
    return {
        "name": "fake",
        "display_name": "Fake CLI",
        "credential_files": [{"source": ".fake/creds.json", "target": ".fake/creds.json", "mode": 0o600}],
        "timeout": timeout,
        "flows": {flow: {"command": [sys.executable, "-c", script], **extra}},
    }


# ---- sign-in -----------------------------------------------------------------------------------------------------
def test_example_cli_signs_in_and_credentials_are_pushed(agent: Agent, idp: tuple[str, IdpState]) -> None:
    issuer, idp_state = idp
    agent.controller.fail_credentials = 1  # the first push gets a 503: the agent retries
    assert agent.status()["state"] == "idle"
    assert agent.call("POST", "/v1/login", login_body(issuer)) == (202, {"started": True})
    code, out = agent.call("POST", "/v1/login", login_body(issuer))
    assert code == 409 and out["provider"] == "example"

    status = agent.finished()
    assert status["state"] == "captured", status
    assert status["url_host"] == urllib.parse.urlsplit(issuer).netloc
    assert status["prompts_answered"] == 1  # "Continue? [Y/n]" (the CLI aborts on anything but yes)
    ctl = agent.controller
    eventually_sync(lambda: bool(ctl.credentials), 30, "credentials push")
    assert ctl.names() == ["login_started", "url_captured", "credentials_found"]
    assert ctl.events[1]["detail"] == f"{issuer}/authorize"  # scheme://host/path only
    assert ctl.events[2]["detail"] == ".example/credentials.json"
    assert ctl.credential_attempts == 2
    assert set(ctl.auth_seen) == {f"Bearer {SECRET}"}

    (push,) = ctl.credentials
    assert push["provider"] == "example"
    (f,) = push["files"]
    assert (f["target"], f["mode"]) == (".example/credentials.json", 0o600)
    creds = json.loads(base64.b64decode(f["data_b64"]))
    assert creds["access_token"].startswith("ex-at-") and creds["issuer"] == issuer
    assert (agent.home / ".example" / "credentials.json").read_bytes() == base64.b64decode(f["data_b64"])

    assert len(agent.browser.opened) == 1 and agent.browser.opened[0].startswith(f"{issuer}/authorize?")
    assert [e["kind"] for e in idp_state.events] == ["authorize_page", "approved", "token_issued"]
    # a finished login can be started again
    assert agent.call("POST", "/v1/cancel-login") == (200, {"cancelled": False, "state": "captured"})


def test_no_credential_or_url_secret_in_logs_or_events(
    agent: Agent, idp: tuple[str, IdpState], agent_log: list[str]
) -> None:
    issuer, _ = idp
    assert agent.call("POST", "/v1/login", login_body(issuer))[0] == 202
    assert agent.finished()["state"] == "captured"
    creds = json.loads(base64.b64decode(agent.controller.credentials[0]["files"][0]["data_b64"]))
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(agent.browser.opened[0]).query))
    secrets = [creds["access_token"], creds["refresh_token"], query["state"], query["code_challenge"]]
    text = "\n".join(agent_log)
    assert "credentials found" in text and "sign-in URL captured" in text  # the capture did log
    events = json.dumps(agent.controller.events)
    for secret in secrets:
        assert secret not in text
        assert secret not in events
    assert SECRET not in text


def test_cli_exiting_without_credentials_fails_with_a_redacted_reason(agent: Agent) -> None:
    script = "print('fatal: cannot reach the server, token=abcdef0123456789xyz'); raise SystemExit(1)"
    assert agent.call("POST", "/v1/login", {"provider": fake_provider(script)})[0] == 202
    status = agent.finished()
    assert status["state"] == "failed"
    reason = status["reason"]
    expected = "CLI exited with 1 while waiting for the sign-in URL: fatal: cannot reach the server, token=[redacted]"
    assert reason.startswith(expected), reason  # the step, then the rendered screen's last lines
    assert "abcdef0123456789xyz" not in reason
    ctl = agent.controller
    eventually_sync(lambda: "login_failed" in ctl.names(), 30, "login_failed")
    assert ctl.names() == ["login_started", "login_failed"]
    assert ctl.events[-1]["detail"] == reason
    assert ctl.credentials == []


def test_timeout_kills_the_cli_and_its_children(agent: Agent) -> None:
    script = (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open(os.path.expanduser('~/pids'), 'w').write(f'{os.getpid()} {child.pid}')\n"
        "print('waiting for nothing', flush=True)\n"
        "time.sleep(60)\n"
    )
    too_long = fake_provider(script, timeout=600)  # the definition's timeout is not the sign-in's: the request's is
    assert agent.call("POST", "/v1/login", {"provider": too_long, "timeout": "soon"})[0] == 400
    assert agent.call("POST", "/v1/login", {"provider": too_long, "timeout": 1.5})[0] == 202
    status = agent.finished()
    assert status["state"] == "failed"
    assert status["reason"] == "timed out after 1.5 s waiting for the sign-in URL (screen: waiting for nothing)"
    eventually_sync(lambda: "login_failed" in agent.controller.names(), 30, "login_failed")
    pids = [int(p) for p in (agent.home / "pids").read_text().split()]

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    eventually_sync(lambda: all(gone(p) for p in pids), 10, "the CLI's processes to end")


FAKE_TUI = r"""
import json, os, sys, termios, time, tty
for _ in range(2):
    sys.stdout.write("Press \x1b[1mEnter\x1b[0m to continue "); sys.stdout.flush()
    sys.stdin.readline()
saved = termios.tcgetattr(0)
tty.setraw(0)
os.write(1, b"\x1b[6n")
reply = b""
while not reply.endswith(b"R"):
    reply += os.read(0, 1)
termios.tcsetattr(0, termios.TCSADRAIN, saved)
print("\r\nDocs: https://docs.example.test/help")
sys.stdout.write("Sign in: \x1b[4mhttps://auth.example.test/oauth/auth"); sys.stdout.flush()
time.sleep(0.2)
print("orize?client_id=x&state=STATE0123456789abcdef\x1b[24m")
sys.stdout.flush()
time.sleep(0.3)
os.makedirs(os.path.expanduser("~/.fake"), exist_ok=True)
with open(os.path.expanduser("~/.fake/creds.json"), "w") as f:
    f.write('{"cpr": ' + json.dumps(reply.decode()) + ', "tty": ' + json.dumps(os.ttyname(0)) + "}")
"""


def test_prompts_cursor_query_and_url_from_the_output(agent: Agent) -> None:
    agent.browser.follow = False
    provider = fake_provider(
        FAKE_TUI,
        prompts=[{"expect": "(?i)press enter to continue", "send": "\\r", "once": False}],
        url_must_contain="/oauth/authorize",
    )
    assert agent.call("POST", "/v1/login", {"provider": provider})[0] == 202
    status = agent.finished()
    assert status["state"] == "captured", status
    assert status["prompts_answered"] == 2
    url = "https://auth.example.test/oauth/authorize?client_id=x&state=STATE0123456789abcdef"
    assert agent.browser.opened == [url]  # whole (read in two parts), not the docs link, exactly once
    assert agent.controller.events[1] == {
        "event": "url_captured",
        "detail": "https://auth.example.test/oauth/authorize",
    }
    creds = json.loads(base64.b64decode(agent.controller.credentials[0]["files"][0]["data_b64"]))
    assert creds["cpr"] == "\x1b[1;1R"
    assert creds["tty"].startswith("/dev/pts/")


FAKE_HOOK_CLI = r"""
import os, subprocess, time
print("Opening your browser...", flush=True)
subprocess.run([os.environ["BROWSER"], "http://127.0.0.1:9/oauth/authorize?code_challenge=abc"], check=True)
time.sleep(0.5)
os.makedirs(os.path.expanduser("~/.fake"), exist_ok=True)
with open(os.path.expanduser("~/.fake/creds.json"), "w") as f:
    f.write('{"token": "t"}')
"""


def test_url_from_the_browser_hook_ignores_earlier_lines(agent: Agent) -> None:
    agent.browser.follow = False
    spool = agent.home / ".hearth" / "browser-urls"
    spool.parent.mkdir()
    spool.write_text("1.0 http://127.0.0.1:9/oauth/authorize?stale=1\n")  # from before this login
    provider = fake_provider(FAKE_HOOK_CLI, url_must_contain="/oauth/authorize")
    assert agent.call("POST", "/v1/login", {"provider": provider})[0] == 202
    assert agent.finished()["state"] == "captured"
    assert agent.browser.opened == ["http://127.0.0.1:9/oauth/authorize?code_challenge=abc"]
    assert stat.S_IMODE(spool.stat().st_mode) in (0o600, 0o644)


def test_cancel_ends_a_running_login(agent: Agent) -> None:
    script = "import time; print('waiting', flush=True); time.sleep(60)"
    assert agent.call("POST", "/v1/login", {"provider": fake_provider(script)})[0] == 202
    eventually_sync(lambda: bool(agent.controller.events), 30, "login_started")
    assert agent.call("POST", "/v1/cancel-login") == (200, {"cancelled": True, "state": "failed"})
    assert agent.status()["reason"] == "cancelled"
    assert agent.controller.names() == ["login_started"]  # the controller asked: no login_failed


def test_login_requests_are_checked(agent: Agent) -> None:
    code, out = agent.call("POST", "/v1/login", {"provider": fake_provider("pass")}, secret="wrong-secret-000000")
    assert code == 401
    missing = {**fake_provider("pass"), "flows": {"loopback": {"command": ["no-such-cli-hearth"]}}}
    code, out = agent.call("POST", "/v1/login", {"provider": missing})
    assert code == 424 and "not installed" in out["error"]
    npm_cli = {**missing, "cli": {"package": "@example/no-such-cli", "bin": "no-such-cli-hearth"}}
    code, out = agent.call("POST", "/v1/login", {"provider": npm_cli})
    assert code == 424 and "run `hearth image build`" in out["error"]
    code, out = agent.call("POST", "/v1/login", {"provider": fake_provider("pass"), "flow": "device_code"})
    assert code == 400 and out["error"] == "fake has no 'device_code' flow; it has: loopback"
    escape = {**fake_provider("pass"), "credential_files": [{"source": "../x", "target": "x"}]}
    assert agent.call("POST", "/v1/login", {"provider": escape})[0] == 400
    assert agent.call("POST", "/v1/login", {"provider": fake_provider("pass"), "env": {"A": 1}})[0] == 400
    assert agent.status()["state"] == "idle"
    assert agent.controller.events == []


# ---- installing delivered credentials (CLI sandbox) ---------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_files_are_installed_with_the_exact_mode(agent: Agent) -> None:
    old = agent.home / ".codex" / "auth.json"
    old.parent.mkdir(mode=0o755)
    old.write_text("old")
    old.chmod(0o644)
    files = [
        {"target": ".codex/auth.json", "mode": 0o600, "data_b64": b64(b'{"new": 1}')},
        {"target": ".claude/.credentials.json", "mode": 384, "data_b64": b64(b"{}")},
    ]
    code, out = agent.call("POST", "/v1/files", {"files": files})
    assert (code, out) == (200, {"installed": [".codex/auth.json", ".claude/.credentials.json"]})
    assert old.read_bytes() == b'{"new": 1}'
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    new = agent.home / ".claude" / ".credentials.json"
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert stat.S_IMODE(new.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in new.parent.iterdir()) == [".credentials.json"]  # no temp file left


@pytest.mark.parametrize("target", ["../x", "/etc/x", "a/../../x", "", "a/../.."])
def test_files_outside_home_are_refused(agent: Agent, target: str) -> None:
    files = [{"target": target, "mode": 0o600, "data_b64": b64(b"x")}]
    code, out = agent.call("POST", "/v1/files", {"files": files})
    assert code == 400, out
    assert sorted(os.listdir(agent.home)) == []


def test_files_through_symlinks_are_refused(agent: Agent, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (agent.home / "link").symlink_to(outside)
    (agent.home / "real").mkdir()
    (agent.home / "real" / "file").symlink_to(outside / "target")
    for target in ("link/x", "link/sub/x", "real/file"):
        code, out = agent.call("POST", "/v1/files", {"files": [{"target": target, "mode": 0o600, "data_b64": "eA=="}]})
        assert code == 400 and "symlink" in out["error"], (target, out)
    assert list(outside.iterdir()) == []
    # a batch is checked as a whole before anything is written
    batch = [{"target": "ok", "mode": 0o600, "data_b64": "eA=="}, {"target": "../bad", "mode": 0o600, "data_b64": ""}]
    assert agent.call("POST", "/v1/files", {"files": batch})[0] == 400
    assert not (agent.home / "ok").exists()


def test_files_need_the_agent_secret(agent: Agent) -> None:
    files = [{"target": "x", "mode": 0o600, "data_b64": b64(b"x")}]
    code, _ = agent.call("POST", "/v1/files", {"files": files}, secret="not-the-secret-0000")
    assert code == 401
    assert not (agent.home / "x").exists()
    bad = [{"target": "x", "mode": 0o1777, "data_b64": "eA=="}, {"target": "y", "mode": 0o600, "data_b64": "!!"}]
    for item in bad:
        assert agent.call("POST", "/v1/files", {"files": [item]})[0] == 400


# ---- the CLI sandbox: an agent without a desktop ------------------------------------------------------------------
def test_agent_without_desktop_runs_no_services(tmp_path: Path) -> None:
    cfg = parse_config({"ip": "127.0.0.1", "secret": SECRET, "desktop": False})
    sup = Supervisor(cfg, home=str(tmp_path))
    runner = threading.Thread(target=sup.run, daemon=True)
    runner.start()
    try:
        health = sup.health()
        assert health["ok"] is True and health["services"] == {}
    finally:
        sup.request_stop()
        runner.join(10)
    assert not runner.is_alive()


# ---- redaction (terminal text: tests/hearth_agent/test_loginscreen.py) -----------------------------------------------
def test_redaction() -> None:
    assert url_summary("https://user:pw@auth.test:8443/oauth/authorize?state=s3cr3t#frag") == (
        "https://auth.test:8443/oauth/authorize"
    )
    line = 'error: {"access_token": "ex-at-abc"} Bearer sk-live-1 see https://h.test/cb?code=XYZ monkey=ok'
    assert redact(line) == 'error: {"access_token": "[redacted]"} Bearer [redacted] see https://h.test/cb monkey=ok'
    assert redact("ghp_Zk3aQ8pLx0vR2mN7tY5wE1uI9oP unchanged words") == "[redacted] unchanged words"


def test_every_builtin_definition_is_accepted_as_the_controller_sends_it() -> None:
    from hearth.providers.registry import load

    for name, provider in load().items():
        parsed = parse_provider(provider.model_dump(mode="json"))  # what the controller posts to /v1/login
        assert (parsed.name, parsed.timeout) == (name, provider.timeout)
        assert parsed.cli_bin == (provider.cli.bin if provider.cli else None)
        assert [f.target for f in parsed.files] == [f.target for f in provider.credential_files]
        assert sorted(parsed.flows) == sorted(f.value for f in provider.flows)
        for flow_name, flow in provider.flows.items():
            got = parsed.flow(flow_name.value)
            assert (got.command, got.env, got.display) == (flow.command, flow.env, flow.display)
            assert [p.send for p in got.prompts] == [p.send for p in flow.prompts]
    assert unescape("y\\r") == "y\r" and unescape("\\x1b[B\\n") == "\x1b[B\n"


# ---- only the provider definitions the controller named -----------------------------------------------------------
def test_login_runs_only_the_definition_named_in_the_config(tmp_path: Path) -> None:
    """A controller-configured agent (config key `providers`) refuses any other definition — a caller holding the
    secret cannot make it run an arbitrary command — and extra env beyond HEARTH_*; nothing is started."""
    allowed = fake_provider("pass")
    cfg = {"ip": "127.0.0.1", "secret": SECRET, "desktop": False, "providers": [definition_digest(allowed)]}
    sup = Supervisor(parse_config(cfg), home=str(tmp_path))
    signin = SignIn(sup, cfg, home=str(tmp_path))
    evil = fake_provider("import os; os.system('touch /tmp/pwned')")
    assert signin.login({"provider": evil})[0] == 403
    assert signin.login({"provider": {**allowed, "command": ["/bin/sh", "-c", "id"]}})[0] == 403
    assert signin.login({"provider": allowed, "env": {"LD_PRELOAD": "/tmp/x.so"}})[0] == 400
    assert signin._run is None
    none_allowed = {**cfg, "providers": []}  # a session without a provider: no logins at all
    assert SignIn(sup, none_allowed, home=str(tmp_path)).login({"provider": allowed})[0] == 403


def test_the_clis_environment_carries_no_ci_markers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A login is a person at a terminal: CI markers inherited by the agent would make CLIs headless."""
    markers = ("CI", "CI_JOB_ID", "CONTINUOUS_INTEGRATION", "GITHUB_ACTIONS", "BUILD_NUMBER")
    for key in markers:
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("HEARTH_KEEP_ME", "yes")
    cfg = {"ip": "127.0.0.1", "secret": SECRET, "desktop": False}
    signin = SignIn(Supervisor(parse_config(cfg), home=str(tmp_path)), cfg, home=str(tmp_path))
    env = signin.child_env(parse_provider(fake_provider("pass")).flow(None), {"HEARTH_X": "1"})
    assert [k for k in env if k in markers or k.startswith("CI_")] == []
    assert env["HEARTH_KEEP_ME"] == "yes" and env["HEARTH_X"] == "1" and env["HOME"] == str(tmp_path)
