"""Start the desktop services in order and keep them running.

Xvfb (ready when it writes its display number to -displayfd) → openbox → x11vnc (ready when its port accepts) →
chromium. A service that dies is restarted with back-off; when Xvfb restarts, everything drawn on it restarts too.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hearth_agent")

CHROMIUM_FLAGS = [
    "--no-sandbox",
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
    "--start-maximized",
]


@dataclass
class Service:
    name: str
    state: str = "stopped"  # stopped | starting | running | failed
    pid: int | None = None
    restarts: int = 0
    ready_at: float | None = None
    last_exit: int | None = None
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
    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = config
        self.t0 = time.monotonic()
        self.display = ""
        self.services = {n: Service(n) for n in ("xvfb", "openbox", "x11vnc", "chromium")}
        if not config.get("chromium", True):
            del self.services["chromium"]
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.home = os.environ.get("HOME", "/tmp")

    # ---- lifecycle ----------------------------------------------------------------------------
    def run(self) -> None:
        """Start everything in order, then keep it running until stopped. A service that fails to start or dies is
        retried with back-off (0.2 s doubling to 5 s); when Xvfb goes, everything drawn on it is restarted."""
        backoff = {name: 0.2 for name in self.services}
        next_try = {name: 0.0 for name in self.services}
        started = set()
        while not self._stop.is_set():
            for svc in self.services.values():  # reap
                if svc.proc is not None and svc.proc.poll() is not None:
                    code = svc.proc.returncode
                    with self._lock:
                        svc.last_exit, svc.state, svc.pid, svc.proc = code, "failed", None, None
                    log.warning("service exited", extra={"service": svc.name, "code": code})
                    if svc.name == "xvfb":
                        self._stop_services([n for n in self.services if n != "xvfb"])
            now = time.monotonic()
            for name, svc in self.services.items():  # (re)start in order
                if svc.proc is not None:
                    continue
                if name != "xvfb" and self.services["xvfb"].state != "running":
                    break
                if now < next_try[name]:
                    break
                try:
                    self._start(name, restart=name in started)
                    started.add(name)
                    backoff[name] = 0.2
                except Exception as exc:
                    with self._lock:
                        svc.state = "failed"
                        if name in started:
                            svc.restarts += 0
                    log.error("service failed to start", extra={"service": name, "error": str(exc)})
                    next_try[name] = now + backoff[name]
                    backoff[name] = min(backoff[name] * 2, 5.0)
                    break
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._stop_services(list(reversed(self.services)))

    def _stop_services(self, names: list[str]) -> None:
        procs = []
        for name in names:
            svc = self.services.get(name)
            if svc and svc.proc and svc.proc.poll() is None:
                svc.proc.terminate()
                procs.append(svc)
        deadline = time.monotonic() + 3
        for svc in procs:
            assert svc.proc is not None
            try:
                svc.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait(3)
            with self._lock:
                svc.state, svc.pid, svc.proc = "stopped", None, None

    # ---- services -----------------------------------------------------------------------------
    def _start(self, name: str, restart: bool = False) -> None:
        svc = self.services[name]
        with self._lock:
            svc.state = "starting"
            if restart:
                svc.restarts += 1
        getattr(self, f"_start_{name}")(svc)
        with self._lock:
            svc.state = "running"
            svc.ready_at = time.monotonic()
        log.info("service ready", extra={"service": name, "pid": svc.pid})

    def _spawn(self, svc: Service, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        env = {**os.environ, "DISPLAY": self.display} if self.display else dict(os.environ)
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, **kw)
        with self._lock:
            svc.proc, svc.pid = proc, proc.pid
        return proc

    def _start_xvfb(self, svc: Service) -> None:
        os.makedirs("/tmp/.X11-unix", mode=0o1777, exist_ok=True)
        r, w = os.pipe()
        try:
            proc = self._spawn(
                svc,
                [
                    "Xvfb",
                    "-displayfd",
                    str(w),
                    "-screen",
                    "0",
                    self.cfg.get("screen", "1280x800x24"),
                    "-nolisten",
                    "tcp",
                    "-dpi",
                    "96",
                    "+extension",
                    "RANDR",
                ],
                pass_fds=(w,),
                stdout=subprocess.DEVNULL,
            )
        finally:
            os.close(w)
        data = b""
        deadline = time.monotonic() + 15
        try:  # read up to the newline: closing early makes Xvfb's second write fail ("Cannot write display")
            while not data.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
                chunk = os.read(r, 64) if ready else b""
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(r)
        if not data.strip():
            proc.kill()
            proc.wait(3)
            raise RuntimeError("Xvfb did not report a display within 15 s")
        self.display = ":" + data.decode().strip()

    def _start_openbox(self, svc: Service) -> None:
        self._spawn(svc, ["openbox"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _start_x11vnc(self, svc: Service) -> None:
        ip, port = self.cfg["ip"], int(self.cfg.get("rfb_port", 5900))
        proc = self._spawn(
            svc,
            [
                "x11vnc",
                "-display",
                self.display,
                "-listen",
                ip,
                "-rfbport",
                str(port),
                "-nopw",
                "-forever",
                "-shared",
                "-noxdamage",
                "-quiet",
                "-norc",
                "-nossl",
                "-noipv6",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                with self._lock:
                    svc.proc, svc.pid = None, None
                raise RuntimeError(f"x11vnc exited with {proc.returncode}")
            try:
                with socket.create_connection((ip, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait(3)
        raise RuntimeError("x11vnc did not listen within 15 s")

    def _start_chromium(self, svc: Service) -> None:
        self._spawn(
            svc,
            self.chromium_argv(self.cfg.get("start_url", "about:blank")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def chromium_argv(self, url: str) -> list[str]:
        return ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={self.home}/.chromium", url]

    def open_url(self, url: str) -> None:
        """Open `url` in the running Chromium (a second invocation hands it to the first)."""
        subprocess.Popen(
            self.chromium_argv(url),
            env={**os.environ, "DISPLAY": self.display},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def health(self) -> dict[str, Any]:
        with self._lock:
            services = {n: s.snapshot(self.t0) for n, s in self.services.items()}
        return {
            "ok": all(s["state"] == "running" for s in services.values()),
            "services": services,
            "display": self.display,
            "uptime": round(time.monotonic() - self.t0, 3),
        }


def load_config(path: str) -> dict[str, Any]:
    with open(path) as f:
        cfg: dict[str, Any] = json.load(f)
    for key in ("ip", "secret"):
        if not cfg.get(key):
            raise ValueError(f"agent config {path} lacks {key!r}")
    return cfg


def install_signals(sup: Supervisor, on_stop: Any) -> None:
    def stop_all() -> None:
        sup.stop()
        on_stop()

    def handler(_sig: int, _frame: Any) -> None:
        threading.Thread(target=stop_all, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
