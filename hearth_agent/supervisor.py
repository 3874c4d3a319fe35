"""Start the desktop services in order and keep them running.

What to start, in which order and how each tells it is ready are the recipes (hearth_agent/recipes.py: Xvnc →
openbox → chromium, or Xvfb → openbox → x11vnc → chromium); this is the supervision. A service that dies is
restarted with back-off (0.25 s doubling to 5 s while it keeps dying within 10 s of its start); when the display
server restarts, everything drawn on it is restarted too.
With `browser_on_request` (the controller's default) Chromium stays `waiting` until asked — POST /v1/browser
(hearth_agent/browser.py), a page to show (`open_url`), or BROWSER_UNASKED seconds without either.

One thread (the one calling `run`) owns every child process; HTTP threads only read snapshots under the lock and
queue short-lived helpers (`open_url`), which the same thread reaps. That thread sleeps until something happens: a
child exits (its pidfd), a request or a signal wakes it (hearth_agent/wakeup.py), or the next restart / browser /
helper deadline — no periodic tick (where the kernel has no pidfd it polls every TICK).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from typing import Any

from hearth_agent.config import AgentConfig
from hearth_agent.readiness import read_display, wait_exit, wait_port, window_listed
from hearth_agent.recipes import X_FLAGS, Context, chromium_argv, chromium_sandbox_available, desktop
from hearth_agent.record import dataclass, field  # not dataclasses: it imports inspect (hearth_agent/record.py)
from hearth_agent.wakeup import Waker, pidfd, wait_readable

log = logging.getLogger("hearth_agent")

MIN_BACKOFF, MAX_BACKOFF, STABLE_AFTER = 0.25, 5.0, 10.0
STOP_GRACE = 3.0  # TERM, then KILL
HELPER_TTL = 30.0  # a `chromium <url>` hand-off that has not exited by then is killed
BROWSER_UNASKED = 180.0  # a browser waiting for its turn starts by itself after this long (a lost request)
OPEN_WAIT = 20.0  # a page to show waits this long for a browser that is still starting
TICK = 0.1  # polling only where the kernel has no pidfd


class Unavailable(RuntimeError):
    """The service an action needs is not running (HTTP 409)."""


@dataclass
class Service:
    name: str
    state: str = "stopped"  # stopped | waiting (Chromium, until asked for) | starting | running | failed
    pid: int | None = None
    restarts: int = 0
    ready_at: float | None = None  # monotonic
    last_exit: int | None = None
    attempted: bool = False  # a later start is a restart
    started_at: float = 0.0
    backoff: float = 0.0
    next_try: float = 0.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def snapshot(self, t0: float) -> dict[str, Any]:
        return {
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "ready_at": None if self.ready_at is None else round(self.ready_at - t0, 3),
            "last_exit": self.last_exit,
        }


class Supervisor:
    def __init__(self, config: AgentConfig, home: str | None = None) -> None:
        self.cfg = config
        self.t0 = time.monotonic()
        self.home = home or os.environ.get("HOME") or "/tmp"
        self.display = ""
        self.recipes = {r.name: r for r in desktop(config)}
        self.display_service = next(iter(self.recipes), "")  # the first recipe owns the display
        self.services = {n: Service(n) for n in self.recipes}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # a service became running (`wait_display`)
        self._stop = threading.Event()
        self._stop_reason = ""
        self._helpers: list[tuple[subprocess.Popen[bytes], float]] = []
        self._browser = threading.Event()  # Chromium may start (at once, unless config.browser_on_request)
        self._waker = Waker()  # the supervisor thread looks again now (a stop, a browser asked for, a helper)
        # the children the supervisor thread waits on → their pidfds (keyed by the Popen: a pid can be reused)
        self._pidfds: dict[subprocess.Popen[bytes], int] = {}
        self._first_url = ""  # the page Chromium starts on when a page is what asked for it
        self._shown_pid: int | None = None  # the Chromium process whose window was seen listed (browser_shown)
        if "chromium" in self.services and config.browser_on_request:
            self.services["chromium"].state = "waiting"
        else:
            self._browser.set()
        self.chromium_sandbox = chromium_sandbox_available()
        if config.chromium and not self.chromium_sandbox:
            log.warning("user namespaces unavailable: Chromium runs WITHOUT its sandbox (--no-sandbox)")

    # ---- lifecycle ----------------------------------------------------------------------------
    def run(self) -> None:
        """Start everything in order and keep it running until `request_stop`; then stop every child."""
        try:
            while not self._stop.is_set():
                self._reap(time.monotonic())
                self._start_due()
                self._sleep()
        finally:
            log.info("stopping", extra={"reason": self._stop_reason or "supervisor loop ended"})
            self._shutdown()
            for fd in self._pidfds.values():
                os.close(fd)
            self._pidfds = {}

    def _sleep(self) -> None:
        """Until a child exits, something wakes the supervisor, or the next deadline (`_next_due`)."""
        with self._lock:
            procs = [s.proc for s in self.services.values() if s.proc is not None] + [p for p, _ in self._helpers]
        fds = [self._waker.fileno()]
        timeout = self._next_due(time.monotonic())
        live = {}
        for proc in procs:
            fd = self._pidfds.pop(proc, None)
            fd = pidfd(proc.pid) if fd is None else fd
            if fd is None:  # no pidfd here: poll for this child's exit
                timeout = TICK if timeout is None else min(timeout, TICK)
                continue
            live[proc] = fd
            fds.append(fd)
        for fd in self._pidfds.values():  # children reaped since the last sleep
            os.close(fd)
        self._pidfds = live
        if not self._stop.is_set():
            wait_readable(fds, timeout)
        self._waker.drain()

    def _next_due(self, now: float) -> float | None:
        """Seconds until a service may (re)start, the unasked browser starts anyway, or a helper expires; None:
        nothing is due until an event."""
        due: list[float] = []
        with self._lock:
            display = self.services.get(self.display_service)
            for name, svc in self.services.items():
                if svc.proc is not None or (svc is not display and display is not None and display.state != "running"):
                    continue  # running, or waiting for the display (whose own restart is due)
                if name == "chromium" and not self._browser.is_set():
                    due.append(self.t0 + BROWSER_UNASKED)
                else:
                    due.append(svc.next_try)
            due += [since + HELPER_TTL for _, since in self._helpers]
        return max(0.0, min(due) - now) if due else None

    def request_stop(self, reason: str = "") -> None:
        """Ask `run` to stop the children and return (safe from signal handlers and other threads)."""
        self._stop_reason = self._stop_reason or reason
        self._stop.set()
        self._waker.wake()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _reap(self, now: float) -> None:
        for svc in self.services.values():
            if svc.proc is None or svc.proc.poll() is None:
                continue
            self._exited(svc, svc.proc.returncode, now)
            if svc.name == self.display_service:  # everything drawn on the display restarts with it
                for dep in self.services.values():
                    if dep is not svc and dep.proc is not None:
                        self._stop_procs([dep])
                        log.info("service stopped: display restarting", extra={"service": dep.name})
        with self._lock:
            keep = []
            for proc, since in self._helpers:
                if proc.poll() is not None:
                    continue
                if now - since > HELPER_TTL:
                    proc.kill()
                    wait_exit(proc, 1.0)
                    continue
                keep.append((proc, since))
            self._helpers = keep

    def _exited(self, svc: Service, code: int, now: float) -> None:
        up = now - svc.started_at
        with self._lock:
            svc.backoff = MIN_BACKOFF if up >= STABLE_AFTER else min(max(svc.backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
            svc.next_try = now + svc.backoff
            svc.state, svc.pid, svc.proc, svc.last_exit = "failed", None, None, code
        log.warning("service exited", extra={"service": svc.name, "code": code, "retry_in": svc.backoff})

    def _start_due(self) -> None:
        for name, svc in self.services.items():
            if self._stop.is_set():
                return
            if svc.proc is not None or time.monotonic() < svc.next_try:
                continue
            if name == "chromium" and not self._browser.is_set():
                if time.monotonic() - self.t0 < BROWSER_UNASKED:
                    continue
                log.warning("nobody asked for the browser; starting it anyway", extra={"after": BROWSER_UNASKED})
                self._browser.set()
            if name != self.display_service and self.services[self.display_service].state != "running":
                continue
            self._start(svc)

    def _start(self, svc: Service) -> None:
        with self._lock:
            svc.state = "starting"
            if svc.attempted:
                svc.restarts += 1
            svc.attempted = True
            svc.started_at = time.monotonic()
        try:
            self._launch(svc)
        except Exception as exc:
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.kill()
                wait_exit(svc.proc, 2.0)
            now = time.monotonic()
            with self._lock:
                svc.backoff = min(max(svc.backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
                svc.next_try = now + svc.backoff
                svc.state, svc.pid, svc.proc = "failed", None, None
            log.error("service failed to start", extra={"service": svc.name, "error": str(exc)})
            return
        with self._lock:
            svc.state = "running"
            svc.ready_at = time.monotonic()
            self._changed.notify_all()
        log.info("service ready", extra={"service": svc.name, "pid": svc.pid, "restarts": svc.restarts})

    def _shutdown(self) -> None:
        with self._lock:
            helpers = [p for p, _ in self._helpers]
            self._helpers = []
        self._stop_procs([*reversed(self.services.values())], helpers)
        log.info("all services stopped")

    def _stop_procs(self, services: list[Service], extra: list[subprocess.Popen[bytes]] | None = None) -> None:
        """TERM, wait up to STOP_GRACE, KILL; mark the services stopped."""
        procs = [s.proc for s in services if s.proc is not None] + (extra or [])
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            if not wait_exit(proc, max(0.0, deadline - time.monotonic())):
                proc.kill()
                wait_exit(proc, 2.0)
        with self._lock:
            for svc in services:
                if svc.proc is not None:
                    svc.last_exit = svc.proc.returncode
                svc.state, svc.pid, svc.proc = "stopped", None, None

    # ---- services -----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.display:
            env["DISPLAY"] = self.display
        return env

    def _spawn(self, svc: Service, argv: list[str], quiet: bool, **kw: Any) -> subprocess.Popen[bytes]:
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.Popen(argv, env=self._env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out, **kw)
        with self._lock:
            svc.proc, svc.pid = proc, proc.pid
        return proc

    def _launch(self, svc: Service) -> None:
        """Start `svc` from its recipe; return once it is ready (RuntimeError when it does not get there)."""
        recipe = self.recipes[svc.name]
        url = self._first_url or self.cfg.start_url
        argv = recipe.argv(Context(self.cfg, self.home, self.display, url, self.chromium_sandbox))
        if recipe.displayfd:
            proc = self._start_x(svc, argv, recipe.quiet)
        else:
            proc = self._spawn(svc, argv, quiet=recipe.quiet)
        if recipe.port:
            wait_port(proc, argv[0], self.cfg.ip, self.cfg.rfb_port, self._stop)

    def _start_x(self, svc: Service, argv: list[str], quiet: bool) -> subprocess.Popen[bytes]:
        """Start an X server that reports its display number on -displayfd; ready when it did."""
        os.makedirs("/tmp/.X11-unix", mode=0o1777, exist_ok=True)
        r, w = os.pipe()
        try:
            proc = self._spawn(svc, [*argv, "-displayfd", str(w), *X_FLAGS], quiet=quiet, pass_fds=(w,))
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self.display = read_display(r, proc, argv[0], self._stop, self._waker)
        return proc

    def chromium_argv(self, url: str) -> list[str]:
        return chromium_argv(self.home, url, self.chromium_sandbox)

    # ---- actions (HTTP threads) ---------------------------------------------------------------
    def want_browser(self, url: str = "") -> bool:
        """Let Chromium start (the supervisor thread starts it on its next tick), on `url` when given; returns
        whether this call is what started it (False: it was already allowed to run)."""
        with self._lock:
            if self._browser.is_set() or "chromium" not in self.services:
                return False
            self._first_url = url
            self._browser.set()
            self._waker.wake()
        log.info("browser start requested", extra={"for_page": bool(url)})
        return True

    def browser_shown(self) -> bool | None:
        """Whether the window manager lists a client window (Chromium's) on the display; None when this cannot be
        told here (no xprop in this userspace). Once seen for a Chromium process, that process is not asked about
        again: a warm-pool sandbox handed to a session answers at once, instead of starting xprop — an X client the
        display serves — just when the session's first frame is drawn (a Chromium that closes its window exits)."""
        with self._lock:
            svc = self.services.get("chromium")
            pid = svc.pid if svc is not None and svc.state == "running" else None
        if pid is not None and pid == self._shown_pid:
            return True
        shown = window_listed(self.display)
        if shown and pid is not None:
            self._shown_pid = pid
        return shown

    def wait_browser(self, timeout: float) -> tuple[str, bool | None]:
        """The one wait for "Chromium runs and its window shows" (through restarts, until `timeout` or the agent
        stops); returns Chromium's state and `browser_shown` (None: cannot be told here)."""
        deadline = time.monotonic() + timeout
        state, shown = "", None
        while not self._stop.is_set():
            with self._lock:
                svc = self.services.get("chromium")
                state = svc.state if svc is not None else "absent"
            if state == "running":
                shown = self.browser_shown()
                if shown is not False:
                    break
            if state == "absent" or time.monotonic() >= deadline:
                break
            self._stop.wait(0.05)
        return state, shown

    def open_url(self, url: str) -> None:
        """Open `url` in Chromium: a second invocation on the same profile hands it to the first. A browser still
        waiting for its turn starts at once, on this page; one starting is waited for (up to OPEN_WAIT) until its
        window shows — before that a second invocation could race it for the profile."""
        with self._lock:
            svc = self.services.get("chromium")
            if svc is None or self._stop.is_set():
                raise Unavailable("chromium is not running")
            if svc.state == "waiting" and self.want_browser(url):
                return
        state, shown = self.wait_browser(OPEN_WAIT)
        if state != "running" or shown is False or self._stop.is_set():
            raise Unavailable(f"chromium did not come up within {OPEN_WAIT:.0f}s")
        with self._lock:
            proc = subprocess.Popen(
                self.chromium_argv(url),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._helpers.append((proc, time.monotonic()))
        self._waker.wake()  # its exit (pidfd) and its deadline join the supervisor's wait
        log.info("url handed to chromium", extra={"pid": proc.pid})

    def wait_display(self, timeout: float) -> bool:
        """Until the display service runs (for Xvnc: its RFB port accepts too), `timeout`, or the agent stops;
        whether it runs. No display (a direct or CLI sandbox): at once."""

        def running() -> bool:
            svc = self.services.get(self.display_service)
            return svc is None or svc.state == "running" or self._stop.is_set()

        with self._changed:
            self._changed.wait_for(running, timeout)
            svc = self.services.get(self.display_service)
            return svc is None or svc.state == "running"

    def health(self) -> dict[str, Any]:
        with self._lock:
            services = {n: s.snapshot(self.t0) for n, s in self.services.items()}
        return {
            "ok": all(s["state"] == "running" for s in services.values()) and not self._stop.is_set(),
            "services": services,
            "display": self.display,
            "uptime": round(time.monotonic() - self.t0, 3),
        }
