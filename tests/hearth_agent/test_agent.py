"""The guest agent on loopback: its HTTP API and auth, its config checks, and the real process under Debian's
/usr/bin/python3 with nothing but the standard library."""

from __future__ import annotations

import ast
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hearth_agent
from hearth.guest import packages as guestpkg
from hearth_agent.__main__ import build_server
from hearth_agent.config import AgentConfig, ConfigError, parse_config
from hearth_agent.server import AgentServer, HttpError
from hearth_agent.supervisor import BROWSER_UNASKED, MAX_BACKOFF, MIN_BACKOFF, Service, Supervisor
from tests.waits import eventually_sync

SECRET = "s3cret-" + "x" * 32
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        assert SECRET.encode() not in raw
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = AgentServer(("127.0.0.1", 0), SECRET, lambda: {"ok": True, "services": {}})

    def echo(body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("fail"):
            raise HttpError(409, "asked to fail")
        return 200, {"echo": body}

    server.route("POST", "/v1/echo", echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_health_is_open_everything_else_needs_the_secret(echo_server: int) -> None:
    port = echo_server
    assert request(port, "GET", "/health") == (200, {"ok": True, "services": {}})
    body = json.dumps({"a": 1}).encode()
    assert request(port, "POST", "/v1/echo", body)[0] == 401
    assert request(port, "POST", "/v1/echo", body, bearer("wrong"))[0] == 401
    assert request(port, "POST", "/v1/echo", body, bearer(SECRET + "x"))[0] == 401
    assert request(port, "POST", "/v1/echo", body, bearer(SECRET[:-1]))[0] == 401
    assert request(port, "POST", "/v1/echo", body, {"Authorization": f"Basic {SECRET}"})[0] == 401
    assert request(port, "POST", "/v1/echo", body, bearer(SECRET)) == (200, {"echo": {"a": 1}})
    assert request(port, "POST", "/v1/echo", body, {"Authorization": f"bearer  {SECRET}"})[0] == 200


def test_unknown_routes_and_bad_bodies(echo_server: int) -> None:
    port = echo_server
    assert request(port, "GET", "/v1/nothing")[0] == 401  # no route discovery without the secret
    assert request(port, "GET", "/v1/nothing", None, bearer(SECRET))[0] == 404
    assert request(port, "POST", "/v1/echo", b"{not json", bearer(SECRET))[0] == 400
    assert request(port, "POST", "/v1/echo", b"[1, 2]", bearer(SECRET))[0] == 400
    assert request(port, "POST", "/v1/echo", b'{"fail": true}', bearer(SECRET)) == (409, {"error": "asked to fail"})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # claims a huge body, sends none
        s.sendall(
            f"POST /v1/echo HTTP/1.1\r\nAuthorization: Bearer {SECRET}\r\nContent-Length: 99999999\r\n\r\n".encode()
        )
        assert s.recv(64).startswith(b"HTTP/1.1 413")


def config(**kw: Any) -> AgentConfig:
    return parse_config({"ip": "127.0.0.1", "agent_port": free_port(), "secret": SECRET, **kw})


def test_open_url_route() -> None:
    cfg = config(chromium=False)
    sup = Supervisor(cfg)  # never run: no chromium, so nothing can be opened
    server = build_server(cfg, sup)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = cfg.agent_port
        ok = json.dumps({"url": "https://example.org/"}).encode()
        assert request(port, "POST", "/v1/open-url", ok)[0] == 401
        assert request(port, "POST", "/v1/open-url", ok, bearer("nope"))[0] == 401
        assert request(port, "POST", "/v1/open-url", ok, bearer(SECRET)) == (409, {"error": "chromium is not running"})
        for bad in ("file:///etc/passwd", "javascript:alert(1)", "--renderer-cmd-prefix=x", "https://", 7):
            status, _ = request(port, "POST", "/v1/open-url", json.dumps({"url": bad}).encode(), bearer(SECRET))
            assert status == 400, bad
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_config_problems_are_listed_without_the_secret() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"ip": "nope", "secret": "short", "agent_port": 70000, "screen": "big", "chromium": "yes"})
    text = str(err.value)
    for words in ("ip must be", "secret must be", "agent_port must be", "screen must look like", "chromium must be"):
        assert words in text
    assert "short" not in text
    cfg = config()
    assert SECRET not in repr(cfg) and cfg.screen == "1280x800x24" and cfg.desktop


def test_backoff_grows_while_a_service_keeps_dying_and_resets_when_stable() -> None:
    sup = Supervisor(config())
    svc = Service("x11vnc")
    now = 1000.0
    delays = []
    for _ in range(8):
        svc.started_at = now - 0.5  # died half a second after its start
        sup._exited(svc, 1, now)
        delays.append(svc.next_try - now)
    assert delays[0] == MIN_BACKOFF and delays == sorted(delays) and delays[-1] == MAX_BACKOFF
    svc.started_at = now - 60  # ran for a minute: a fresh failure, not a crash loop
    sup._exited(svc, 1, now)
    assert svc.next_try - now == MIN_BACKOFF and svc.state == "failed" and svc.last_exit == 1


def test_agent_imports_only_the_stdlib_and_the_guest_packages() -> None:
    allowed = set(sys.stdlib_module_names) | {m.__name__ for m in guestpkg.PACKAGES} - {"hearth_example"}
    for path in Path(next(iter(hearth_agent.__path__))).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


@pytest.fixture
def guest_path(tmp_path: Path) -> Path:
    return guestpkg.install(tmp_path / "guest")  # exactly what a sandbox gets at /opt/hearth


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's /usr/bin/python3")
def test_agent_process_under_system_python(tmp_path: Path, guest_path: Path) -> None:
    port = free_port()
    cfg_path = tmp_path / "agent.json"
    cfg_path.write_text(json.dumps({"ip": "127.0.0.1", "agent_port": port, "secret": SECRET, "desktop": False}))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(guest_path), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, "-P", "-m", "hearth_agent", "--config", str(cfg_path)],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def health() -> tuple[int, Any]:
            if proc.poll() is not None:  # it died: no use waiting (RuntimeError is not one of NOT_YET)
                raise RuntimeError(proc.stderr.read() if proc.stderr else "")
            return request(port, "GET", "/health")

        status, body = eventually_sync(health, 10, "agent listening")
        assert status == 200 and body["ok"] and body["services"] == {}
        assert request(port, "POST", "/v1/open-url", b"{}", bearer("x"))[0] == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    lines = [json.loads(line) for line in err.splitlines()]  # JSON lines only
    assert any(line["msg"] == "agent stopped" for line in lines)
    assert any(line.get("extension") == "hearth_agent.signin" for line in lines)  # pyte imports in the guest copy
    assert SECRET not in err


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's /usr/bin/python3")
def test_agent_refuses_a_bad_config(tmp_path: Path, guest_path: Path) -> None:
    cfg_path = tmp_path / "agent.json"
    cfg_path.write_text(json.dumps({"ip": "127.0.0.1", "secret": SECRET, "rfb_port": "5900"}))
    done = subprocess.run(
        [SYSTEM_PYTHON, "-P", "-m", "hearth_agent", "--config", str(cfg_path)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(guest_path)},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 2
    assert "rfb_port must be a TCP port number" in done.stderr and SECRET not in done.stderr


def test_a_browser_on_request_waits_for_its_turn_then_starts_unasked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's decision only (no processes): with `browser_on_request` Chromium is left `waiting` while the
    display runs, started once asked, and started anyway when nobody asked within BROWSER_UNASKED."""
    started: list[str] = []
    for asked in (True, False):
        sup = Supervisor(config(browser_on_request=True))
        monkeypatch.setattr(sup, "_start", lambda svc: started.append(svc.name))
        for svc in sup.services.values():
            if svc.name != "chromium":
                svc.state, svc.proc = "running", object()  # type: ignore[assignment]
        assert (
            sup.services["chromium"].state == "waiting" and sup.health()["services"]["chromium"]["state"] == "waiting"
        )
        sup._start_due()
        assert started == []
        if asked:
            assert sup.want_browser() is True and sup.want_browser() is False
        else:
            sup.t0 -= BROWSER_UNASKED + 1
        sup._start_due()
        assert started == ["chromium"]
        started.clear()
