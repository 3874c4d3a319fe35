"""Provider conformance: drive a provider's real CLI through the agent's own sign-in code, offline.

For one provider and flow: a network namespace of our own (`<prefix><hex>`, loopback only — no route anywhere),
a throwaway HOME, a stand-in for the controller's callback endpoint on loopback (it records the events, `signin`
prompts and credential pushes), and the agent's `SignIn` routes (hearth_agent/signin.py) running the flow's
command inside that namespace. Checked: the CLI is installed (and its version), the sign-in URL is captured with the
flow's redirect, what the person must see is pushed (device code / code prompt), and — when a completion step
exists for the flow — the callback or code completes and the credential files arrive with their modes.

Used by tests/standins/test_conformance.py and `hearth providers check`; needs root (namespaces).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hearth.clisandbox.delivery import files_body
from hearth.providers.model import FlowName, Provider
from hearth.standins.standin import DEVICE_USER_CODE, REFUSED_CODE, Net, get_in_netns, wrap
from hearth.standins.standin import provider_net as standin_net
from hearth.vault.store import CredentialFile
from hearth_agent.contract.signin import login_body
from hearth_agent.signin import SignIn

HOOK = Path(__file__).resolve().parents[2] / "hearth_agent" / "browser_hook.py"
SESSION = "conformance"
SECRET = secrets.token_hex(16)
CODE_PROMPT_WAIT = 30.0  # seconds for the CLI to ask for the pasted code once its URL is out
STATUS_TIMEOUT = 60.0  # seconds for a CLI's own status check


@dataclass
class FlowResult:
    provider: str
    flow: str
    cli_version: str = ""
    url_captured: bool = False
    url_host: str = ""
    seconds_to_url: float | None = None
    prompt: dict[str, Any] | None = None  # the signin push (user_code, awaiting_code …); URL removed
    credentials_written: bool | None = None  # None: no completion step for this flow here
    failed_step: str = ""
    screen_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed_step


@dataclass
class Pushes:
    events: list[dict[str, Any]] = field(default_factory=list)
    signin: list[dict[str, Any]] = field(default_factory=list)
    credentials: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Step:
    """What a completion step (the person's part) gets: the namespace, the sign-in URL, the pushes so far, the
    agent's sign-in routes (to type a code) and the provider stand-in (None without `standin`)."""

    netns: str
    url: str
    pushes: Pushes
    signin: SignIn
    net: Net | None


@contextlib.contextmanager
def controller_standin() -> Iterator[tuple[str, Pushes]]:
    pushes = Pushes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            kind = self.path.rsplit("/", 1)[-1]
            ok = self.headers.get("Authorization") == f"Bearer {SECRET}" and kind in ("events", "signin", "credentials")
            if ok:
                getattr(pushes, kind).append(json.loads(raw or b"{}"))
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pushes
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def offline_netns(prefix: str) -> Iterator[str]:
    """A network namespace with only loopback up (no route out); deleted afterwards."""
    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


class _Desk:
    """What SignIn needs of the supervisor: HOME, a DISPLAY name, and where a loopback flow's URL is opened."""

    def __init__(self, home: str, on_url: Callable[[str], None]) -> None:
        self.home, self.display, self._on_url = home, ":99", on_url

    def open_url(self, url: str) -> None:
        self._on_url(url)


def cli_version(bin_dir: Path, exe: str) -> str:
    try:
        out = subprocess.run(
            [str(bin_dir / exe), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": tempfile.gettempdir()},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__})"
    return (out.stdout.strip().splitlines() or ["unknown"])[0]


def run_flow(
    provider: Provider,
    flow: FlowName,
    clis_dir: Path | None,
    *,
    netns_prefix: str = "hearth-t",
    url_timeout: float = 60.0,
    complete: Callable[[Step], None] | None = None,
    credentials_timeout: float = 60.0,
    extra_env: dict[str, str] | None = None,
    prepare: Callable[[str], contextlib.AbstractContextManager[dict[str, str]]] | None = None,
    standin: bool = False,
    signed_in: bool = False,
) -> FlowResult:
    """One flow of one provider, as described in the module docstring. `complete(step)` does
    what the person would (follow the redirect, type a code) against local stand-ins; without it the run stops
    after the URL. `prepare(netns)` starts stand-ins inside the namespace and yields extra environment for the CLI;
    `standin` runs the providers' network stand-in (hearth/standins/standin.py) there and points the CLI at it;
    `signed_in` then asks the CLI itself whether the delivered files sign it in (`_signed_in`)."""
    res = FlowResult(provider.name, flow.value)
    bin_dir = (clis_dir / "node_modules" / ".bin") if clis_dir is not None else None
    definition = provider.agent_document()
    command = definition["flows"][flow.value]["command"]
    if provider.cli is not None:
        if bin_dir is None or not (bin_dir / provider.cli.bin).exists():
            res.failed_step = f"install: {provider.cli.bin} is not installed; run `bash scripts/setup.sh`"
            return res
        res.cli_version = cli_version(bin_dir, provider.cli.bin)
    opened: list[str] = []
    home = tempfile.mkdtemp(prefix="hearth-conformance-")
    os.chmod(home, 0o700)
    old_bin = os.environ.get("HEARTH_CLIS_BIN")
    try:
        with contextlib.ExitStack() as stack:
            ns = stack.enter_context(offline_netns(netns_prefix))
            callback, pushes = stack.enter_context(controller_standin())
            env = dict(extra_env or {})
            if prepare is not None:
                env.update(stack.enter_context(prepare(ns)))
            net = stack.enter_context(standin_net(ns)) if standin else None
            if net is not None:
                env.update(net.env)
                command = wrap(command, net.hosts_file)
            definition["flows"][flow.value]["command"] = ["nsenter", f"--net=/run/netns/{ns}", "--", *command]
            if bin_dir is not None:
                os.environ["HEARTH_CLIS_BIN"] = str(bin_dir)
            cfg = {"callback": callback, "session_id": SESSION, "secret": SECRET}
            hook = Path(home) / ".hearth-hook" / HOOK.name  # executable, as the guest package installs it
            hook.parent.mkdir(mode=0o700)
            shutil.copy(HOOK, hook)
            hook.chmod(0o755)
            signin = SignIn(_Desk(home, opened.append), cfg, home=home, hook=str(hook))  # type: ignore[arg-type]
            t0 = time.monotonic()
            code, out = signin.login(login_body(definition, flow.value, env=env))
            if code != 202:
                res.failed_step = f"start: HTTP {code}: {out.get('error')}"
                return res
            try:
                _follow(res, signin, pushes, opened, t0, url_timeout, ns, complete, credentials_timeout, net)
                if signed_in and res.ok and res.credentials_written and net is not None:
                    _signed_in(res, provider, pushes, ns, net, bin_dir)
            finally:
                _, status = signin.status({})
                res.screen_tail = str(status.get("screen_tail", ""))
                signin.shutdown()
                if net is not None:
                    res.extra["requests"] = net.paths()
    finally:
        if old_bin is None:
            os.environ.pop("HEARTH_CLIS_BIN", None)
        else:
            os.environ["HEARTH_CLIS_BIN"] = old_bin
        shutil.rmtree(home, ignore_errors=True)
    return res


def _follow(
    res: FlowResult,
    signin: SignIn,
    pushes: Pushes,
    opened: list[str],
    t0: float,
    url_timeout: float,
    ns: str,
    complete: Callable[[Step], None] | None,
    credentials_timeout: float,
    net: Net | None,
) -> None:
    deadline = t0 + url_timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, status = signin.status({})
        wants_prompt = res.flow != FlowName.LOOPBACK.value
        if status["state"] != "running" and (not wants_prompt or pushes.signin or status["state"] == "failed"):
            break
        time.sleep(0.05)
    if status.get("state") == "failed" or not status.get("url_host"):
        res.failed_step = f"URL: {status.get('reason') or f'no sign-in URL within {url_timeout:g} s'}"
        return
    res.url_captured, res.url_host = True, str(status["url_host"])
    res.seconds_to_url = round(time.monotonic() - t0, 3)
    url = pushes.signin[-1]["url"] if pushes.signin else (opened[0] if opened else "")
    if pushes.signin:
        res.prompt = {k: v for k, v in pushes.signin[-1].items() if k != "url"}
    res.extra["url"] = url
    if complete is None:
        return
    res.credentials_written = False
    try:
        complete(Step(ns, url, pushes, signin, net))
    except Exception as exc:
        res.failed_step = f"complete: {type(exc).__name__}: {exc}"
        return
    end = time.monotonic() + credentials_timeout
    while time.monotonic() < end and signin.status({})[1]["state"] not in ("captured", "failed"):
        time.sleep(0.1)
    _, status = signin.status({})
    if status["state"] != "captured" or not pushes.credentials:
        res.failed_step = f"credentials: {status.get('reason') or 'not written in time'}"
        return
    res.credentials_written = True
    res.extra["files"] = [(f["target"], f["mode"]) for f in pushes.credentials[0]["files"]]


def _signed_in(res: FlowResult, provider: Provider, pushes: Pushes, ns: str, net: Net, bin_dir: Path | None) -> None:
    """Delivered means usable: only the delivered files — the pushed credentials and the definition's settings, as
    the controller sends them to a CLI sandbox (hearth/clisandbox/delivery.py), installed by the agent's own
    `POST /v1/files` — in a fresh home, and the CLI's own status check (the definition's `status`) must say signed
    in, offline against the stand-in."""
    check = provider.status
    if check is None:
        res.failed_step = f"signed in: {provider.name} declares no status check (`status` in its definition)"
        return
    delivered = [
        CredentialFile(f["target"], int(f["mode"]), base64.b64decode(f["data_b64"]))
        for f in pushes.credentials[0]["files"]
    ]
    home = tempfile.mkdtemp(prefix="hearth-delivered-")
    os.chmod(home, 0o700)
    try:
        agent = SignIn(_Desk(home, lambda _url: None), {"secret": SECRET}, home=home)  # type: ignore[arg-type]
        code, out = agent.files(files_body(delivered, provider))
        if code != 200:
            res.failed_step = f"signed in: installing the delivered files: HTTP {code}: {out.get('error')}"
            return
        res.extra["delivered"] = sorted(str(p.relative_to(home)) for p in Path(home).rglob("*") if p.is_file())
        path = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin" if bin_dir is not None else "/usr/local/bin:/usr/bin:/bin"
        env = {"HOME": home, "PATH": path, "TERM": "dumb", "LANG": "C.UTF-8", **net.env, **check.env}
        command = ["nsenter", f"--net=/run/netns/{ns}", "--", *wrap(check.command, net.hosts_file)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=STATUS_TIMEOUT, env=env, cwd=home)
        except subprocess.TimeoutExpired:
            res.failed_step = f"signed in: `{' '.join(check.command)}` did not answer within {STATUS_TIMEOUT:g} s"
            return
        said = (done.stdout + done.stderr).strip()
        res.extra["status"] = said[-2000:]
        if done.returncode != check.exit_code or not re.search(check.signed_in, said):
            res.failed_step = (
                f"signed in: with only the delivered files, `{' '.join(check.command)}` exited {done.returncode} "
                f"and said: {said[-400:]!r}"
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---- the person's part, per real CLI and flow (against hearth/standins/standin.py) ----------------------------
def _query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def follow_redirect(step: Step) -> None:
    """Loopback: the provider redirects the browser to the CLI's callback with a code (GET inside the namespace)."""
    q = _query(step.url)
    target = q["redirect_uri"] + "?" + urllib.parse.urlencode({"code": "test-code", "state": q.get("state", "")})
    status, _ = get_in_netns(step.netns, target)
    if status >= 400:
        raise RuntimeError(f"the CLI's callback answered HTTP {status}")


def paste(template: str) -> Callable[[Step], None]:
    """Paste code: the provider's page shows a code; the person pastes it (typed by the agent's code route) once the
    page asks for it — when the agent saw the CLI's prompt (before that the agent answers 409, as the controller
    does), not merely once the URL is out."""

    def run(step: Step) -> None:
        deadline = time.monotonic() + CODE_PROMPT_WAIT
        while not (status := step.signin.status({})[1]).get("awaiting_code"):
            if status["state"] not in ("running", "url_captured") or time.monotonic() > deadline:
                raise RuntimeError(f"the CLI did not ask for the code (state {status['state']})")
            time.sleep(0.05)
        code, out = step.signin.code({"code": template.format(state=_query(step.url).get("state", ""))})
        if code != 200:
            raise RuntimeError(f"POST /v1/login/code → {code}: {out.get('error')}")

    return run


def approve_device(step: Step) -> None:
    """Device code: the person enters the shown code on the provider's page (the stand-in's approval)."""
    shown = step.pushes.signin[-1]["user_code"] if step.pushes.signin else None
    if shown != DEVICE_USER_CODE:
        raise RuntimeError(f"the device code pushed was {shown!r}, the provider issued {DEVICE_USER_CODE!r}")
    assert step.net is not None
    step.net.approved.set()


COMPLETIONS: dict[tuple[str, FlowName], Callable[[Step], None]] = {
    ("claude_code", FlowName.LOOPBACK): follow_redirect,
    ("claude_code", FlowName.PASTE_CODE): paste("test-code#{state}"),  # Claude's page shows code#state
    ("codex", FlowName.LOOPBACK): follow_redirect,
    ("codex", FlowName.DEVICE_CODE): approve_device,
    ("gemini_cli", FlowName.LOOPBACK): follow_redirect,
    ("gemini_cli", FlowName.PASTE_CODE): paste("test-code"),
}


def check(provider: Provider, flow: FlowName, clis_dir: Path | None, netns_prefix: str = "hearth-t") -> FlowResult:
    """The whole conformance of one real CLI flow: URL, the person's part, credentials pushed with their modes."""
    res = run_flow(
        provider,
        flow,
        clis_dir,
        netns_prefix=netns_prefix,
        standin=True,
        complete=COMPLETIONS.get((provider.name, flow)),
        signed_in=True,
    )
    if res.credentials_written:
        want = sorted((f.target, f.mode) for f in provider.credential_files)
        if sorted(res.extra.get("files", [])) != want:
            res.failed_step = f"credentials: pushed {res.extra.get('files')}, the definition declares {want}"
    return res


def refused_then_pasted(template: str) -> Callable[[Step], None]:
    """Paste code, as a person who first pastes a wrong code: the CLI's own refusal is pushed, it asks again (maybe
    with a new URL), and the right code then signs in."""

    def run(step: Step) -> None:
        first = paste(template.replace("test-code", REFUSED_CODE))
        first(step)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            again = [p for p in step.pushes.signin if p.get("message")]
            if again and again[-1]["awaiting_code"]:
                break
            if step.signin.status({})[1]["state"] == "failed":
                raise RuntimeError("the CLI gave up after one wrong code")
            time.sleep(0.1)
        else:
            raise RuntimeError("the CLI's refusal of a wrong code was not pushed")
        retry = Step(step.netns, again[-1]["url"], step.pushes, step.signin, step.net)
        paste(template)(retry)

    return run
