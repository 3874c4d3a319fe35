"""CLI sign-ins inside the sandbox, and installing delivered credentials.

Routes (all need `Authorization: Bearer <agent secret>`):

- `POST /v1/login` `{"provider": <provider definition>, "env": {...}}` → 202 `{"started": true}`, 409 while one runs.
  Runs the provider's CLI in a PTY, answers its prompts, captures the sign-in URL (BROWSER hook spool or output),
  opens it in Chromium once, watches the credential files, pushes them to the controller.
- `GET /v1/login` → `{"state", "provider", "url_host", "reason", "prompts_answered"}` (never a secret).
- `POST /v1/cancel-login` → `{"cancelled": bool, "state"}`.
- `POST /v1/files` `{"files": [{"target", "mode", "data_b64"}]}` → `{"installed": [targets]}` (CLI sandbox).

Pushed to the controller: events `login_started` | `url_captured` (scheme://host/path only) | `credentials_found`
(targets) | `login_failed` (reason, redacted), and the credentials `{"provider", "files": [{target, mode,
data_b64}]}`. Credential contents and sign-in URLs (beyond scheme://host/path) never reach a log or an event.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from hearth_agent import homefs
from hearth_agent.config import AgentConfig
from hearth_agent.controller import Outbox, redact, url_host, url_summary
from hearth_agent.providerdef import FileDef, ProviderDef, definition_digest, parse_provider, str_map
from hearth_agent.ptyproc import PtyProcess, TermText
from hearth_agent.server import AgentServer
from hearth_agent.supervisor import Supervisor

log = logging.getLogger("hearth_agent")

DEFAULT_HOOK = "/opt/hearth/hearth_agent/browser_hook.py"
SPOOL = ".hearth/browser-urls"  # written by browser_hook.py: "<unix time> <url>\n" per call
POLL = 0.2  # credential files and the spool are polled (no inotify in the stdlib)
URL_QUIET = 1.0  # a URL at the very end of the output is taken once the CLI was quiet this long
EXIT_GRACE = 1.0  # after the CLI exits, files it just wrote still get this long to appear and settle
KEEP_TEXT = 64 * 1024
CREDENTIALS_BUDGET = 30.0
_TRAILING = ".,;:!?'\")]}>"


def _digest(data: bytes | None) -> bytes | None:
    return None if data is None else hashlib.sha256(data).digest()


# ---- one login attempt ----------------------------------------------------------------------------------------
class LoginRun:
    def __init__(
        self,
        p: ProviderDef,
        env: dict[str, str],
        home: str,
        open_url: Callable[[str], None],
        outbox: Outbox,
    ) -> None:
        self.p, self.home, self._open_url, self._outbox = p, home, open_url, outbox
        self.state, self.reason, self.url_host, self.answered = "running", "", "", 0
        self._lock = threading.Lock()
        self._term = TermText()
        self._text, self._base, self._last_output = "", 0, time.monotonic()
        self._prompt_pos = [0] * len(p.prompts)
        self._prompt_done = [False] * len(p.prompts)
        self._url_pos = 0
        self._url: str | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()
        spool = self._read(SPOOL, 1 << 20, note=False)
        self._spool_off = len(spool or b"")
        self._initial = {f.source: _digest(self._read(f.source)) for f in p.files}  # only new content counts
        self._snapshot: list[bytes | None] | None = None
        self._problem = ""
        self._pty = PtyProcess(p.command, env, home, self._on_output)
        self._t0 = time.monotonic()

    # public
    def start(self) -> None:
        self._pty.start()  # OSError when it cannot be started
        log.info("login started", extra={"provider": self.p.name, "pid": self._pty.pid})
        self._outbox.event("login_started", redact(f"{self.p.name}: {' '.join(self.p.command)}"))
        threading.Thread(target=self._main, name=f"login-{self.p.name}", daemon=True).start()

    @property
    def active(self) -> bool:
        return not self._done.is_set()

    def cancel(self, wait: float = 10.0) -> None:
        self._cancel.set()
        self._done.wait(wait)

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state,
                "provider": self.p.name,
                "url_host": self.url_host or None,
                "reason": self.reason or None,
                "prompts_answered": self.answered,
            }

    # PTY output (reader thread)
    def _on_output(self, raw: bytes) -> None:
        text, replies = self._term.feed(raw)
        for reply in replies:
            self._pty.write(reply)
        with self._lock:
            self._last_output = time.monotonic()
            self._append(text)
            self._answer_prompts()
            self._scan_urls(final=False)

    def _append(self, text: str) -> None:
        self._text += text
        if len(self._text) > 2 * KEEP_TEXT:
            cut = len(self._text) - KEEP_TEXT
            self._text, self._base = self._text[cut:], self._base + cut

    def _search(self, pattern: re.Pattern[str], pos: int) -> re.Match[str] | None:
        return pattern.search(self._text, max(0, pos - self._base))

    def _answer_prompts(self) -> None:
        for i, prompt in enumerate(self.p.prompts):
            while not self._prompt_done[i]:
                m = self._search(prompt.expect, self._prompt_pos[i])
                if m is None:
                    break
                self._prompt_pos[i] = self._base + max(m.end(), m.start() + 1)
                if self._pty.write(prompt.send):
                    self.answered += 1
                    log.info("prompt answered", extra={"provider": self.p.name, "event": f"prompt {i + 1}"})
                else:
                    log.warning(
                        "the CLI did not take the answer", extra={"provider": self.p.name, "event": f"prompt {i + 1}"}
                    )
                self._prompt_done[i] = prompt.once

    def _scan_urls(self, final: bool) -> None:
        while self._url is None:
            m = self._search(self.p.url_pattern, self._url_pos)
            if m is None or (m.end() == len(self._text) and not final):
                return  # at the end of what was read, the URL may continue in the next read
            self._url_pos = self._base + max(m.end(), m.start() + 1)
            self._candidate(m.group(0).rstrip(_TRAILING), "output")

    def _candidate(self, url: str, source: str) -> None:
        """The first http(s) URL containing url_must_contain is the sign-in URL: open it, exactly once."""
        if self._url is not None or not url.startswith(("http://", "https://")) or self.p.url_must_contain not in url:
            return
        if any(c.isspace() or ord(c) < 0x20 for c in url):
            return
        self._url, self.url_host = url, url_host(url)
        if self.state == "running":
            self.state = "url_captured"
        summary = url_summary(url)
        log.info(f"sign-in URL captured from the {source}: {summary}", extra={"provider": self.p.name})
        self._outbox.event("url_captured", summary)
        threading.Thread(target=self._open, args=(url,), name="open-url", daemon=True).start()

    def _open(self, url: str) -> None:
        try:
            self._open_url(url)
        except Exception as exc:  # the message may hold the URL: log the type only
            log.warning("opening the sign-in URL failed", extra={"error": type(exc).__name__})

    # the watcher (its own thread)
    def _main(self) -> None:
        try:
            outcome = self._watch()
        except Exception as exc:
            log.error("login watcher failed", extra={"provider": self.p.name, "error": type(exc).__name__})
            outcome = f"agent error: {type(exc).__name__}"
        try:
            if isinstance(outcome, list):
                self._deliver(outcome)
            else:
                self._pty.terminate()
                self._finish("failed", outcome or "cancelled", push=outcome is not None)
        finally:
            self._pty.terminate()
            self._pty.close()
            self._done.set()

    def _watch(self) -> list[tuple[FileDef, bytes]] | str | None:
        """Files when complete; a failure reason; None when cancelled."""
        exited_at: float | None = None
        code = 0
        while not self._cancel.wait(POLL):
            now = time.monotonic()
            self._read_spool()
            with self._lock:
                if now - self._last_output >= URL_QUIET:
                    self._scan_urls(final=True)
            found = self._check_files()
            if found is not None:
                return found
            if exited_at is None:
                status = self._pty.exited()
                if status is not None:
                    exited_at, code = now, status
            elif now - exited_at >= EXIT_GRACE:
                return self._exit_reason(code)
            if now - self._t0 >= self.p.timeout:
                waiting = "the sign-in URL" if self._url is None else "the credentials (sign-in not finished)"
                return f"timed out after {self.p.timeout:g} s waiting for {waiting}"
        return None

    def _exit_reason(self, code: int) -> str:
        self._pty.output_closed(1.0)
        with self._lock:
            self._append(self._term.flush())
            lines = [ln.strip() for ln in self._text.splitlines() if ln.strip()]
        last = redact(lines[-1], 200) if lines else "no output"
        return f"CLI exited with {code}: {last} ({self._problem or 'no credentials'})"

    def _read(self, path: str, limit: int = homefs.MAX_FILE, note: bool = True) -> bytes | None:
        try:
            return homefs.read_file(self.home, path, limit)
        except homefs.PathRefused as exc:
            if note:
                self._problem = str(exc)
            return None

    def _read_spool(self) -> None:
        if self._url is not None:
            return
        data = self._read(SPOOL, 1 << 20, note=False) or b""
        if len(data) < self._spool_off:  # replaced: read it from the start
            self._spool_off = 0
        end = data.rfind(b"\n") + 1
        if end <= self._spool_off:
            return
        lines = data[self._spool_off : end].decode(errors="replace").splitlines()
        self._spool_off = end
        with self._lock:
            for line in lines:
                self._candidate(line.partition(" ")[2].strip(), "BROWSER hook")

    def _check_files(self) -> list[tuple[FileDef, bytes]] | None:
        """All files present, non-empty, new, valid JSON where required, and unchanged since the last poll."""
        contents = [self._read(f.source) for f in self.p.files]
        for f, data in zip(self.p.files, contents, strict=True):
            problem = ""
            if data is None:
                problem = "missing"
            elif not data.strip():
                problem = "empty"
            elif _digest(data) == self._initial[f.source]:
                problem = "not rewritten"
            elif f.require_json:
                try:
                    json.loads(data)
                except ValueError:
                    problem = "not JSON yet"
            if problem:
                self._problem, self._snapshot = f"{f.source}: {problem}", None
                return None
        previous, self._snapshot = self._snapshot, contents
        if previous != contents:
            return None  # stable for one poll first
        return [(f, d) for f, d in zip(self.p.files, contents, strict=True) if d is not None]

    def _deliver(self, found: list[tuple[FileDef, bytes]]) -> None:
        targets = ", ".join(f.target for f, _ in found)
        log.info(f"credentials found: {targets}", extra={"provider": self.p.name})
        self._outbox.event("credentials_found", targets)
        body = {
            "provider": self.p.name,
            "files": [{"target": f.target, "mode": f.mode, "data_b64": base64.b64encode(d).decode()} for f, d in found],
        }
        pushed = self._outbox.submit("credentials", body, CREDENTIALS_BUDGET)
        deadline = time.monotonic() + 2.0  # the CLI may finish on its own (it has what it needs)
        while self._pty.exited() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._pty.terminate()
        try:
            pushed.result(timeout=CREDENTIALS_BUDGET + 60)
        except Exception as exc:
            self._finish("failed", f"could not deliver the credentials to the controller: {exc}")
            return
        self._finish("captured", "")
        log.info("credentials pushed to the controller", extra={"provider": self.p.name})

    def _finish(self, state: str, reason: str, push: bool = True) -> None:
        with self._lock:
            self.state, self.reason = state, reason
        if state == "failed":
            log.warning(f"login failed: {reason}", extra={"provider": self.p.name})
            if push:
                self._outbox.event("login_failed", reason)


# ---- the routes -----------------------------------------------------------------------------------------------
Config = AgentConfig | Mapping[str, Any]
_EXTRA_ENV = re.compile(r"HEARTH_[A-Z0-9_]{1,64}")


def setting(cfg: Config, key: str) -> str:
    value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
    return value if isinstance(value, str) else ""


class SignIn:
    def __init__(self, sup: Supervisor, cfg: Config, home: str | None = None, hook: str | None = None) -> None:
        self.sup, self.cfg = sup, cfg
        self.home = home or sup.home
        self.hook = hook or os.environ.get("BROWSER") or DEFAULT_HOOK
        self._lock = threading.Lock()
        self._run: LoginRun | None = None
        self._outbox: Outbox | None = None

    def outbox(self) -> Outbox:
        if self._outbox is None:
            cb, sid, secret = (setting(self.cfg, k) for k in ("callback", "session_id", "secret"))
            if not (cb and sid and secret):
                raise ValueError("this agent has no controller callback (config callback, session_id)")
            self._outbox = Outbox(cb, sid, secret)
        return self._outbox

    def child_env(self, p: ProviderDef, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("TERM", "xterm-256color")
        env.update(p.env)
        env.update(extra)
        env["HOME"], env["BROWSER"] = self.home, self.hook
        return env

    def login(self, body: dict[str, Any]) -> tuple[int, Any]:
        raw = self.cfg if isinstance(self.cfg, Mapping) else self.cfg.raw
        allowed = raw.get("providers")  # set by the controller for every sandbox; absent: a test's own agent
        extra = str_map(body.get("env"), "env")
        if allowed is not None:
            if not isinstance(allowed, list) or definition_digest(body.get("provider")) not in allowed:
                return 403, {"error": "this provider definition is not one the controller allowed for this sandbox"}
            if any(not _EXTRA_ENV.fullmatch(k) for k in extra):
                return 400, {"error": "env may only name HEARTH_* variables"}
        p = parse_provider(body.get("provider"))
        env = self.child_env(p, extra)
        outbox = self.outbox()
        if shutil.which(p.command[0], path=env.get("PATH")) is None:
            return 400, {"error": f"{p.command[0]!r} is not installed in this sandbox (not found on PATH)"}
        with self._lock:
            if self._run is not None and self._run.active:
                return 409, {"error": "a login is already running", "provider": self._run.p.name}
            run = LoginRun(p, env, self.home, self.sup.open_url, outbox)
            try:
                run.start()
            except OSError as exc:
                return 500, {"error": f"could not start {p.command[0]}: {exc.strerror or type(exc).__name__}"}
            self._run = run
        return 202, {"started": True}

    def status(self, _body: dict[str, Any]) -> tuple[int, Any]:
        run = self._run
        if run is None:
            return 200, {"state": "idle", "provider": None, "url_host": None, "reason": None, "prompts_answered": 0}
        return 200, run.status()

    def cancel(self, _body: dict[str, Any]) -> tuple[int, Any]:
        run = self._run
        if run is None or not run.active:
            return 200, {"cancelled": False, "state": "idle" if run is None else run.state}
        run.cancel()
        log.info("login cancelled", extra={"provider": run.p.name})
        return 200, {"cancelled": True, "state": run.state}

    def files(self, body: dict[str, Any]) -> tuple[int, Any]:
        files = homefs.parse_files(body.get("files"))
        try:
            installed = homefs.install(self.home, files)
        except OSError as exc:
            return 500, {"error": f"could not install the files: {exc.strerror or type(exc).__name__}"}
        log.info(f"installed {', '.join(installed)}")
        return 200, {"installed": installed}

    def remove_files(self, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            removed, absent = homefs.remove(self.home, body.get("targets"))
        except OSError as exc:
            return 500, {"error": f"could not remove the files: {exc.strerror or type(exc).__name__}"}
        if removed:
            log.info(f"removed {', '.join(removed)}")
        return 200, {"removed": removed, "absent": absent}

    def shutdown(self) -> None:
        run = self._run
        if run is not None and run.active:
            run.cancel()


def register(server: AgentServer, sup: Supervisor, cfg: Config) -> SignIn:
    signin = SignIn(sup, cfg)
    server.route("POST", "/v1/login", signin.login)
    server.route("GET", "/v1/login", signin.status)
    server.route("POST", "/v1/cancel-login", signin.cancel)
    server.route("POST", "/v1/files", signin.files)
    server.route("POST", "/v1/files/remove", signin.remove_files)
    atexit.register(signin.shutdown)  # a running CLI (its own session) must not outlive the agent
    return signin
