"""Prompt conformance: each real, pinned CLI answers prompts through the CLI sandbox's agent, offline.

For one provider: a network namespace of our own (loopback only), the providers' network stand-in in it with the
model APIs (hearth/standins/modelapi.py), a HOME holding the provider's signed-in credential files (as the vault
delivers them), a stand-in for the controller's callback endpoint on loopback (it records the prompt batches), and
the agent's own prompt runner (hearth_agent/promptrun.py: `Prompts`) starting the CLI from the definition's `prompt`
section inside that namespace. Scenarios:

- `answer`: the streamed events map to `text` … `done`, the text intact, usage and the conversation id reported;
- `refresh`: the access token is expired when the prompt starts; the CLI refreshes it during the prompt (the
  stand-in rotates the refresh token where the provider does), rewrites its file, and the agent pushes the
  rewritten credential files (at once, or with the final batch) — the newest tokens, the bytes the HOME now holds;
- `revoked`: the stand-in revokes the account; the prompt fails at step `credentials` with `needs_signin` in the
  CLI's own words;
- `cancel`: the stand-in streams slowly; a cancel after the first `text` ends the CLI's whole process tree.

Used by tests/standins/test_prompt_conformance.py and `hearth providers check --prompts`; needs root.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hearth.providers.model import Provider
from hearth.standins import modelapi
from hearth.standins.conformance import cli_version, offline_netns
from hearth.standins.modelapi import ModelAPI
from hearth.standins.standin import Net, fake_jwt, provider_net, wrap
from hearth_agent.promptrun import Prompts, descendants

SCENARIOS = ("answer", "refresh", "revoked", "cancel")
SECRET = secrets.token_hex(16)
RUN_TIMEOUT = 180.0  # s for one prompt of a real CLI on a loaded host


@dataclass
class Receiver:
    """The controller's callback endpoint, for prompt batches: every body, in arrival order."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    first_text: dict[str, float] = field(default_factory=dict)  # prompt id → monotonic time of its first text

    def events(self, pid: str) -> list[dict[str, Any]]:
        with self.cond:
            return [e for b in self.bodies if b.get("prompt_id") == pid for e in b.get("events", [])]

    def final(self, pid: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                done = [b for b in self.bodies if b.get("prompt_id") == pid and "final" in b]
                if done:
                    return done[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def wait_text(self, pid: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while pid not in self.first_text:
                if any(b.get("prompt_id") == pid and "final" in b for b in self.bodies):
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    rx = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ok = self.headers.get("Authorization") == f"Bearer {SECRET}" and self.path.endswith("/prompt")
            if ok:
                body = json.loads(raw or b"{}")
                now = time.monotonic()
                with rx.cond:
                    rx.bodies.append(body)
                    if any(e.get("type") == "text" for e in body.get("events", [])):
                        rx.first_text.setdefault(str(body.get("prompt_id")), now)
                    rx.cond.notify_all()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    rx.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield rx
    finally:
        server.shutdown()
        server.server_close()


# ---- the signed-in credential files, as a sign-in leaves them (the stand-in's generation-0 tokens) ------------------
def signed_in_files(provider: str, *, expired: bool = False) -> dict[str, bytes]:
    """HOME-relative path → content: what the CLI wrote at sign-in against the stand-in (conformance.check), with
    the access token already expired when `expired` (so the CLI must refresh it for the prompt)."""
    now = time.time()
    exp_ms = int((now - 120 if expired else now + 3600) * 1000)
    if provider == "claude_code":
        oauth = {
            "accessToken": "sk-ant-oat01-test",
            "refreshToken": "sk-ant-ort01-test",
            "expiresAt": exp_ms,
            "refreshTokenExpiresAt": int((now + 30 * 86400) * 1000),
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": None,
            "rateLimitTier": None,
            "accountUuid": "00000000-0000-4000-8000-000000000001",
            "organizationUuid": "00000000-0000-4000-8000-000000000002",
        }
        return {".claude/.credentials.json": json.dumps({"claudeAiOauth": oauth}).encode()}
    if provider == "codex":
        claims = {
            "email": "t@example.test",
            "iat": int(now) - 7200,
            "exp": int(now) + (-120 if expired else 3600),
            "https://api.openai.com/auth": {"chatgpt_account_id": "acct-test", "chatgpt_plan_type": "plus"},
        }
        tokens = {
            "id_token": fake_jwt(claims),
            "access_token": fake_jwt({**claims, "scp": ["openid"]}),
            "refresh_token": "rt-test",
            "account_id": "acct-test",
        }
        last = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60))
        auth = {"auth_mode": "chatgpt", "OPENAI_API_KEY": None, "tokens": tokens, "last_refresh": last}
        return {".codex/auth.json": json.dumps(auth, indent=2).encode()}
    if provider == "gemini_cli":
        creds = {
            "access_token": "ya29.test",
            "refresh_token": "1//test",
            "token_type": "Bearer",
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "id_token": fake_jwt({"email": "t@example.test", "sub": "1", "iat": int(now), "exp": int(now) + 3600}),
            "expiry_date": exp_ms,
        }
        settings = {"security": {"auth": {"selectedType": "oauth-personal"}}}  # the definition's settings_files
        return {
            ".gemini/oauth_creds.json": json.dumps(creds, indent=2).encode(),
            ".gemini/settings.json": json.dumps(settings).encode(),
        }
    raise ValueError(f"no signed-in files for {provider}")


@dataclass
class PromptResult:
    provider: str
    scenario: str
    cli_version: str = ""
    failed_step: str = ""
    status: str = ""
    text: str = ""
    seconds_to_first_text: float | None = None
    seconds_to_done: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed_step


@dataclass
class Sandbox:
    """One CLI sandbox stood in: the namespace with the providers' network, its HOME, and the agent's runner."""

    provider: Provider
    ns: str
    net: Net
    api: ModelAPI
    home: Path
    rx: Receiver
    prompts: Prompts

    def definition(self) -> dict[str, Any]:
        """The provider's definition as the agent gets it, its CLI started inside the namespace with the hosts
        file of the stand-in (what a CLI sandbox's own network namespace and DNS give it)."""
        doc = self.provider.agent_document()
        doc["prompt"]["command"] = [
            "nsenter",
            f"--net=/run/netns/{self.ns}",
            "--",
            *wrap(doc["prompt"]["command"], self.net.hosts_file),
        ]
        doc["prompt"]["env"] = {**doc["prompt"].get("env", {}), **self.net.env}
        return doc

    def start(self, prompt: str, pid: str | None = None, **extra: Any) -> tuple[str, float, int, dict[str, Any]]:
        pid = pid or secrets.token_hex(6)
        body = {"id": pid, "provider": self.definition(), "prompt": prompt, "timeout": RUN_TIMEOUT, **extra}
        t0 = time.monotonic()
        code, out = self.prompts.start(body)
        return pid, t0, code, out


@contextlib.contextmanager
def sandbox(
    provider: Provider, clis_dir: Path, api: ModelAPI, *, expired: bool = False, prefix: str = "hearth-t"
) -> Iterator[Sandbox]:
    home = Path(tempfile.mkdtemp(prefix="hearth-prompt-"))
    os.chmod(home, 0o700)
    old_bin = os.environ.get("HEARTH_CLIS_BIN")
    try:
        for rel, data in signed_in_files(provider.name, expired=expired).items():
            p = home / rel
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            p.write_bytes(data)
            p.chmod(0o600)
        with contextlib.ExitStack() as stack:
            ns = stack.enter_context(offline_netns(prefix))
            net = stack.enter_context(provider_net(ns, modelapi.responder(api)))
            rx = stack.enter_context(receiver())
            os.environ["HEARTH_CLIS_BIN"] = str(clis_dir / "node_modules" / ".bin")
            prompts = Prompts({"callback": rx.url, "session_id": "prompt-conformance", "secret": SECRET}, str(home))
            stack.callback(prompts.shutdown)
            yield Sandbox(provider, ns, net, api, home, rx, prompts)
    finally:
        if old_bin is None:
            os.environ.pop("HEARTH_CLIS_BIN", None)
        else:
            os.environ["HEARTH_CLIS_BIN"] = old_bin
        shutil.rmtree(home, ignore_errors=True)


def _collect(res: PromptResult, sb: Sandbox, pid: str, t0: float) -> dict[str, Any] | None:
    final = sb.rx.final(pid, RUN_TIMEOUT + 30)
    if final is None:
        res.failed_step = f"stream: no final batch within {RUN_TIMEOUT + 30:g} s"
        return None
    res.seconds_to_done = round(time.monotonic() - t0, 3)
    if pid in sb.rx.first_text:
        res.seconds_to_first_text = round(sb.rx.first_text[pid] - t0, 3)
    events = sb.rx.events(pid)
    res.text = "".join(e["text"] for e in events if e["type"] == "text")
    res.status = str(final["final"].get("status"))
    res.extra["final"] = {k: v for k, v in final["final"].items() if k != "credentials"}
    res.extra["event_types"] = [e["type"] for e in events]
    res.extra["requests"] = sb.net.paths()
    return final


def check_answer(res: PromptResult, sb: Sandbox) -> None:
    pid, t0, code, out = sb.start("Say the stand-in's sentence.")
    if code != 202:
        res.failed_step = f"start: HTTP {code}: {out.get('error')}"
        return
    if _collect(res, sb, pid, t0) is None:
        return
    types = res.extra["event_types"]
    if res.status != "completed":
        res.failed_step = f"answer: status {res.status}: {res.extra['final'].get('reason')}"
    elif res.text != modelapi.ANSWER:
        res.failed_step = f"answer: text {res.text!r}, the model said {modelapi.ANSWER!r}"
    elif types[-1:] != ["done"] or types.count("done") != 1 or "usage" not in types:
        res.failed_step = f"answer: events {types} (want text … usage … exactly one done, last)"
    elif not res.extra["final"].get("conversation_id"):
        res.failed_step = "answer: no conversation id (the CLI's session) to continue"


def check_refresh(res: PromptResult, sb: Sandbox) -> None:
    target = sb.provider.credential_files[0].target
    before = (sb.home / target).read_bytes()
    pid, t0, code, out = sb.start("Say the stand-in's sentence.")
    if code != 202:
        res.failed_step = f"start: HTTP {code}: {out.get('error')}"
        return
    final = _collect(res, sb, pid, t0)
    if final is None:
        return
    if res.status != "completed" or res.text != modelapi.ANSWER:
        res.failed_step = f"refresh: status {res.status}, text {res.text!r}: {res.extra['final'].get('reason')}"
        return
    if sb.api.refreshes != [sb.provider.name]:
        res.failed_step = f"refresh: the CLI refreshed {len(sb.api.refreshes)} times (want once, during the prompt)"
        return
    batches = [b for b in sb.rx.bodies if b.get("prompt_id") == pid and b.get("credentials")]
    pushed = batches[-1]["credentials"] if batches else None  # at once when rewritten, or with the final batch
    if not pushed:
        res.failed_step = "refresh: the rewritten credential file was not pushed"
        return
    files = {f["target"]: base64.b64decode(f["data_b64"]) for f in pushed["files"]}
    now = (sb.home / target).read_bytes()
    access, refresh = sb.api.tokens(sb.provider.name)
    res.extra["pushed"] = sorted(files)
    if files.get(target) != now or now == before:
        res.failed_step = "refresh: the pushed file is not what the sandbox holds now"
    elif (access.encode() not in now and sb.provider.name != "codex") or refresh.encode() not in now:
        res.failed_step = "refresh: the sandbox's file does not hold the newest (rotated) tokens"


def check_revoked(res: PromptResult, sb: Sandbox) -> None:
    sb.api.revoked = True
    pid, t0, code, out = sb.start("Say the stand-in's sentence.")
    if code != 202:
        res.failed_step = f"start: HTTP {code}: {out.get('error')}"
        return
    if _collect(res, sb, pid, t0) is None:
        return
    final = res.extra["final"]
    if res.status != "failed" or final.get("step") != "credentials" or not final.get("needs_signin"):
        res.failed_step = f"revoked: status {res.status}, step {final.get('step')}: {final.get('reason')}"
    elif final.get("credentials"):  # Claude Code empties its tokens when its refresh is refused: no new credential
        res.failed_step = "revoked: the final batch carries the CLI's unusable credential file"


def check_cancel(res: PromptResult, sb: Sandbox) -> None:
    sb.api.delay, sb.api.chunks = 1.0, 60  # a minute of streaming: the cancel comes in the middle
    pid, t0, code, out = sb.start("Say the stand-in's sentence, slowly.")
    if code != 202:
        res.failed_step = f"start: HTTP {code}: {out.get('error')}"
        return
    run = sb.prompts._runs[pid]
    if not sb.api.streaming.wait(RUN_TIMEOUT):
        res.failed_step = "cancel: the model's answer did not start streaming"
        return
    assert run.proc is not None
    tree = descendants(run.proc.pid)
    res.extra["tree"] = len(tree)
    code, out = sb.prompts.cancel({"id": pid})
    if code != 200 or not out.get("cancelled"):
        res.failed_step = f"cancel: {code} {out}"
        return
    if _collect(res, sb, pid, t0) is None:
        return
    left = [p for p in tree if os.path.exists(f"/proc/{p}") and _not_zombie(p)]
    if res.status != "cancelled":
        res.failed_step = f"cancel: status {res.status}"
    elif res.text == modelapi.ANSWER:
        res.failed_step = "cancel: the whole answer arrived (the cancel was not mid-stream)"
    elif left:
        res.failed_step = f"cancel: {len(left)} of the CLI's {len(tree)} processes still run"
    elif sb.prompts.cancel({"id": pid})[1].get("cancelled") is not False:
        res.failed_step = "cancel: a second cancel was not a no-op"


def check_write(res: PromptResult, sb: Sandbox) -> None:
    """read_only: the model's request to write a file in the workspace is refused (plan mode); workspace_write: the
    CLI's own tool writes it there."""
    target = sb.home / sb.provider.prompt.workspace / modelapi.WRITE_FILE if sb.provider.prompt else sb.home
    for level, want in (("read_only", False), ("workspace_write", True)):
        pid, t0, code, out = sb.start(f"Write the file {modelapi.WRITE_MARKER}", permissions=level)
        if code != 202:
            res.failed_step = f"start: HTTP {code}: {out.get('error')}"
            return
        if _collect(res, sb, pid, t0) is None:
            return
        tools = [e for e in sb.rx.events(pid) if e["type"] == "tool"]
        res.extra[level] = {"status": res.status, "tools": tools, "written": target.exists()}
        if target.exists() != want:
            res.failed_step = f"write: {level}: the file was {'not ' if want else ''}written ({tools})"
            return
        if want and target.read_text() != modelapi.WRITE_CONTENT:
            res.failed_step = f"write: {level}: the file holds {target.read_text()!r}"
            return


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


CHECKS = {
    "answer": check_answer,
    "refresh": check_refresh,
    "revoked": check_revoked,
    "cancel": check_cancel,
    "write": check_write,  # Claude Code and Gemini CLI (Codex offers its tools from a model catalog not stood in)
}


def check(provider: Provider, scenario: str, clis_dir: Path | None, prefix: str = "hearth-t") -> PromptResult:
    """One scenario of one real CLI, as described in the module docstring."""
    res = PromptResult(provider.name, scenario)
    if provider.prompt is None:
        res.failed_step = f"definition: {provider.name} has no prompt section"
        return res
    bin_dir = clis_dir / "node_modules" / ".bin" if clis_dir is not None else None
    if provider.cli is not None and (bin_dir is None or not (bin_dir / provider.cli.bin).exists()):
        res.failed_step = "install: the pinned CLIs are not installed; run `bash scripts/setup.sh`"
        return res
    assert clis_dir is not None and bin_dir is not None
    if provider.cli is not None:
        res.cli_version = cli_version(bin_dir, provider.cli.bin)
    with sandbox(provider, clis_dir, ModelAPI(), expired=scenario == "refresh", prefix=prefix) as sb:
        CHECKS[scenario](res, sb)
    return res
