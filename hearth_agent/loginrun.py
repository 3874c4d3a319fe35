"""One CLI sign-in attempt: the provider's CLI in a PTY, driven the way a person drives it.

What is on the screen and what to do about it is read by hearth_agent/loginscreen.py (pure). This is the run: the
process (hearth_agent/ptyproc.py), the threads, the clock and the pushes. A watcher thread looks at the screen
whenever something happened — output, the CLI exiting (pidfd), a change in the hook spool's or credential files'
directories (inotify: hearth_agent/wakeup.py), a cancel — at most every POLL, and every POLL only while something
settles (recent output, a prompt, files being written, the exit grace); an idle sign-in waiting for the person never
wakes it. It types the prompts' answers, reads the BROWSER/xdg-open hook spool, opens a loopback flow's URL,
watches the credential files, and starts a paste-code CLI that exited on a refused code again. What the person must
see is pushed to the controller as a `signin` message whenever it changes; the full URL goes only there (events and
logs get scheme://host/path).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from hearth_agent import homefs
from hearth_agent.contract.redaction import redact, url_host, url_summary
from hearth_agent.contract.signin import CodeRefused, check_code
from hearth_agent.controller import PUSH_BUDGET, Outbox
from hearth_agent.credfiles import CredentialFiles
from hearth_agent.loginscreen import POLL, LoginScreen
from hearth_agent.pageprobe import Unreachable, local_proxy, probe
from hearth_agent.providerdef import FileDef, FlowDef, ProviderDef
from hearth_agent.ptyproc import PtyProcess
from hearth_agent.screen import COLS, ROWS
from hearth_agent.wakeup import Inotify, Waker, wait_readable

log = logging.getLogger("hearth_agent")

SPOOL = ".hearth/browser-urls"  # written by browser_hook.py (as $BROWSER and as xdg-open): "<unix time> <url>\n"
SETTLE = 1.0  # while the CLI still runs, its credential files must be unchanged this long (a second write comes)
EXIT_GRACE = 1.0  # after the CLI exits, files it just wrote still get this long to appear and settle
CREDENTIALS_BUDGET = PUSH_BUDGET  # retried across a controller restart
MAX_RESTARTS = 3  # paste-code CLIs that exit on a wrong code are started again this often
__all__ = ["SPOOL", "LoginRun"]


class LoginRun:
    def __init__(
        self,
        p: ProviderDef,
        flow: FlowDef,
        env: dict[str, str],
        home: str,
        open_url: Callable[[str], None] | None,
        outbox: Outbox,
        probe_page: bool = False,
    ) -> None:
        self.p, self.flow, self.home, self._open_url, self._outbox = p, flow, home, open_url, outbox
        self.state, self.reason, self.url_host = "running", "", ""
        self._lock = threading.Lock()
        self._env, self.restarts = env, 0
        self.unreachable: Unreachable | None = None  # the sign-in page cannot load in this sandbox (pageprobe.py)
        self._probe_page = probe_page  # the controller asks for it (POST /v1/login `probe_page`)
        self._codes: set[str] = set()  # every code shown to or pasted by the person in this run (across restarts)
        self._answered_before = 0  # prompts typed by the CLI runs before a restart
        self._screen = LoginScreen(flow, time.monotonic(), self._codes)
        self._pushed: dict[str, Any] | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._waker = Waker()  # output, cancel, a probe's verdict: the watcher looks now
        self._files = CredentialFiles(home, p.files)
        spool = self._read(SPOOL, 1 << 20, note=False)
        self._spool_off = len(spool or b"")
        self._pty = PtyProcess(flow.command, env, home, self._on_output, cols=COLS, rows=ROWS)
        self._t0 = time.monotonic()

    @property
    def answered(self) -> int:
        return self._answered_before + self._screen.answered

    @property
    def awaiting_code(self) -> bool:
        return self._screen.awaiting_code

    @property
    def user_code(self) -> str | None:
        return self._screen.user_code

    @property
    def message(self) -> str | None:
        return self._screen.message

    def _restart(self) -> None:
        """A paste-code CLI that exits after refusing a code (Claude Code does) is started again, so the person gets
        a new URL and can retry; its refusal stays in `message`."""
        self._pty.reap()
        self._pty.close()
        with self._lock:
            old = self._screen
            self._answered_before += old.answered
            self._screen = LoginScreen(self.flow, time.monotonic(), self._codes, old.message)
            self.restarts += 1
            self._pty = PtyProcess(self.flow.command, self._env, self.home, self._on_output, cols=COLS, rows=ROWS)
        self._pty.start()
        log.info("CLI started again after a refused code", extra={"provider": self.p.name, "pid": self._pty.pid})
        self._outbox.event("login_restarted", "the CLI refused the code and exited; started again")

    def _refused_and_gone(self) -> bool:
        """The CLI exited after refusing a pasted code (its own words kept in `message`)."""
        with self._lock:
            if self.flow.name != "paste_code" or self.state != "url_captured" or self.restarts >= MAX_RESTARTS:
                return False
            return self._screen.refused_and_gone()

    # ---- public ----
    def start(self) -> None:
        self._pty.start()  # OSError when it cannot be started
        log.info("login started", extra={"provider": self.p.name, "flow": self.flow.name, "pid": self._pty.pid})
        self._outbox.event("login_started", redact(f"{self.p.name} ({self.flow.name}): {' '.join(self.flow.command)}"))
        threading.Thread(target=self._main, name=f"login-{self.p.name}", daemon=True).start()

    @property
    def active(self) -> bool:
        return not self._done.is_set()

    def cancel(self, wait: float = 10.0) -> None:
        self._cancel.set()
        self._waker.wake()
        self._done.wait(wait)

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def screen_tail(self, n: int = 12) -> str:
        with self._lock:
            return self._screen.tail(n)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state,
                "provider": self.p.name,
                "flow": self.flow.name,
                "url_host": self.url_host or None,
                "reason": self.reason or None,
                "prompts_answered": self.answered,
                "awaiting_code": self._screen.awaiting_code,
                "screen_tail": self._screen.tail(),
            }

    def submit_code(self, code: Any) -> None:
        """Type a pasted code + Enter into the CLI (paste_code flows waiting for it)."""
        code = check_code(code)
        with self._lock:
            if self.flow.name != "paste_code":
                raise CodeRefused(409, f"this sign-in is a {self.flow.name} flow; it takes no pasted code")
            if not self.active or self.state not in ("running", "url_captured"):
                raise CodeRefused(409, f"the sign-in is {self.state}; start a new one")
            if not self._screen.take_code(code):
                raise CodeRefused(409, "the CLI is not waiting for a code now")
        ok = self._pty.write(code)
        time.sleep(0.2)  # a TUI takes text and Enter in one read as a paste: Enter comes on its own
        ok = self._pty.write("\r") and ok
        if not ok:
            raise CodeRefused(409, "the CLI did not take the code (it stopped reading its input)")
        log.info("code typed into the CLI", extra={"provider": self.p.name})
        self._outbox.event("code_submitted", self.flow.name)
        self._push_prompt()

    # ---- PTY output (reader thread) ----
    def _on_output(self, raw: bytes) -> None:
        with self._lock:
            replies = self._screen.feed(raw, time.monotonic())
        self._waker.wake()
        for reply in replies:
            self._pty.write(reply)

    # ---- acting on the screen (watcher thread, under the lock) ----
    def _look(self, now: float) -> None:
        found = self._screen.look(now, cli_running=self._pty.exited() is None)
        for i in found.answers:
            if self._pty.write(self.flow.prompts[i].send):
                log.info("prompt answered", extra={"provider": self.p.name, "event": f"prompt {i + 1}"})
                self._screen.typed(i, now, True)
            else:
                self._screen.typed(i, now, False)
        if found.url_source is not None:
            self._captured(found.url_source)
        if found.code_shown:
            log.info("device code shown", extra={"provider": self.p.name})
        if found.refused:
            log.info("the CLI refused the code", extra={"provider": self.p.name})
        if found.new_url and self._screen.url is not None:
            summary = url_summary(self._screen.url)
            log.info(f"the CLI shows a new sign-in URL: {summary}", extra={"provider": self.p.name})

    def _captured(self, source: str) -> None:
        """The sign-in URL was found (opened in Chromium for loopback)."""
        url = self._screen.url
        assert url is not None
        self.url_host = url_host(url)
        if self.state == "running":
            self.state = "url_captured"
        summary = url_summary(url)
        log.info(f"sign-in URL captured from the {source}: {summary}", extra={"provider": self.p.name})
        self._outbox.event("url_captured", summary)
        if self._open_url is not None:
            threading.Thread(target=self._open, args=(url,), name="open-url", daemon=True).start()
            proxied = any(self._env.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))
            if self._probe_page and (not proxied or local_proxy(self._env) is not None):
                threading.Thread(target=self._probe, args=(url,), name="probe-page", daemon=True).start()

    def _probe(self, url: str) -> None:
        """The page opened in the sandbox's browser: can it load from here? (through the sandbox's local egress
        proxy when it has one, as its browser; a sandbox behind any other proxy is not probed)"""
        found = probe(
            url,
            cafiles=tuple(v for k in ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS") if (v := self._env.get(k))),
            proxy=local_proxy(self._env),
        )
        if found is not None:
            log.warning(
                f"the sign-in page cannot load here: [{found.hop}] {found.detail}", extra={"provider": self.p.name}
            )
            with self._lock:
                self.unreachable = found
            self._waker.wake()

    def _open(self, url: str) -> None:
        assert self._open_url is not None
        try:
            self._open_url(url)
        except Exception as exc:  # the message may hold the URL: log the type only
            log.warning("opening the sign-in URL failed", extra={"error": type(exc).__name__})

    def repush(self) -> bool:
        """Push the current prompt again (a restarted controller lost its memory of it); whether there is one."""
        with self._lock:
            self._pushed = None
        self._push_prompt()
        with self._lock:
            return self._pushed is not None

    def _push_prompt(self) -> None:
        """Tell the controller what the person must see, when it changed (the full URL goes only here)."""
        with self._lock:
            body = self._screen.prompt()
            if body is None or body == self._pushed:
                return
            self._pushed = body
        self._outbox.submit("signin", body, PUSH_BUDGET)

    # ---- the watcher (its own thread) ----
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
            self._waker.close()

    def _watch(self) -> list[tuple[FileDef, bytes]] | str | None:
        """Files when complete; a failure reason; None when cancelled."""
        exited_at: float | None = None
        code, version = 0, -1
        events = Inotify.open()
        try:
            last = time.monotonic()
            while not self._sleep(events, exited_at, last):
                last = now = time.monotonic()
                outcome, exited_at, version, code = self._pass(now, exited_at, version, code)
                if outcome is not None:
                    return outcome
        finally:
            if events is not None:
                events.close()
        return None

    def _sleep(self, events: Inotify | None, exited_at: float | None, last: float) -> bool:
        """Wait for the next pass (see the module doc); whether the run was cancelled."""
        fds = [self._waker.fileno()]
        timeout: float | None = POLL
        exit_fd = self._pty.exit_fd() if exited_at is None else None
        if events is not None and (exit_fd is not None or exited_at is not None):
            for path in (SPOOL, *(f.source for f in self.p.files)):
                events.watch_towards(self.home, path)
            fds += [events.fileno(), *([exit_fd] if exit_fd is not None else [])]
            timeout = self._idle_for(time.monotonic(), exited_at)
        ready = wait_readable(fds, timeout)
        self._waker.drain()
        if events is not None and events.fileno() in ready:
            events.drain()
        # at most one pass per POLL, as the ticking watcher did (a CLI drawing fast is not scanned per write)
        return self._cancel.wait(max(0.0, last + POLL - time.monotonic()))

    def _idle_for(self, now: float, exited_at: float | None) -> float | None:
        """How long the watcher may sleep when nothing happens: POLL while something settles, else until the
        next deadline (an ignored prompt's retry, the flow's timeout)."""
        with self._lock:
            settling = self._screen.settling(now)
            retries = self._screen.retry_deadlines()
        if settling or exited_at is not None or self._files.settling:
            return POLL
        return max(0.0, min([self._t0 + self.p.timeout, *retries]) - now)

    def _pass(
        self, now: float, exited_at: float | None, version: int, code: int
    ) -> tuple[list[tuple[FileDef, bytes]] | str | None, float | None, int, int]:
        """One look at everything: (outcome or None, exited_at, screen version, exit status)."""
        self._read_spool()
        with self._lock:
            if self._screen.needs_look(now, version):
                version = self._screen.screen.version
                self._look(now)
        self._push_prompt()
        if self.unreachable is not None:
            return f"[{self.unreachable.hop}] {self.unreachable.detail}", exited_at, version, code
        # while the CLI runs, its files must hold still for SETTLE (it may rewrite them); once it exited, one poll
        found = self._files.check(now, SETTLE if exited_at is None else 0.0)
        if found is not None:
            return found, exited_at, version, code
        if exited_at is None:
            status = self._pty.exited()
            if status is not None:
                exited_at, code = now, status
        elif now - exited_at >= EXIT_GRACE:
            if not self._refused_and_gone():
                return self._exit_reason(code), exited_at, version, code
            self._restart()
            exited_at, version = None, -1
        if now - self._t0 >= self.p.timeout:
            why = f"timed out after {self.p.timeout:g} s waiting for {self._step()} (screen: {self._last_lines()})"
            return why, exited_at, version, code
        return None, exited_at, version, code

    def _step(self) -> str:
        with self._lock:
            return self._screen.step()

    def _last_lines(self, n: int = 3) -> str:
        with self._lock:
            return self._screen.last_lines(n)

    def _exit_reason(self, code: int) -> str:
        self._pty.output_closed(1.0)
        step = self._step()
        return f"CLI exited with {code} while waiting for {step}: {self._last_lines()} ({self._files.problem or 'no credentials'})"

    def _read(self, path: str, limit: int = homefs.MAX_FILE, note: bool = True) -> bytes | None:
        return self._files.read(path, limit, note)

    def _read_spool(self) -> None:
        if self._screen.url is not None:
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
                if self._screen.offer(line.partition(" ")[2].strip()):
                    self._captured("browser hook")

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
            reason = self._screen.scrub(reason)
            self.state, self.reason = state, reason
            self._screen.awaiting_code = False
        if state == "failed":
            log.warning(f"login failed: {reason}", extra={"provider": self.p.name})
            if push:  # an unreachable page names its hop: the controller fails the session there
                self._outbox.event("page_unreachable" if self.unreachable else "login_failed", reason)
