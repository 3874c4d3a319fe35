"""Sign-in end to end with the `example` provider — shared by the sign-in tests (through tests/signinkit.py),
bench/restartkit.py and bench/restart.py: its IdP
listening on BRIDGE_IP inside the fabric namespace (reachable by sandboxes), the settings that point the sandboxes at
it, and the person's own browser, played by plain HTTP requests from sockets inside that namespace (the only
stand-in)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import threading
import urllib.parse
from collections.abc import AsyncIterator

from hearth.config import Settings
from hearth.fabric.dial import socket_in_netns
from hearth_example.idp import IdpServer, IdpState

BRIDGE_IP = "192.168.100.1"  # the default BRIDGE_IP, where the IdP listens in the tests' fabric namespaces


def issuer(port: int, bridge_ip: str = BRIDGE_IP) -> str:
    return f"http://{bridge_ip}:{port}"


def idp_env(port: int, bridge_ip: str = BRIDGE_IP) -> dict[str, str]:
    """Settings under which the sandboxes reach the IdP on `bridge_ip`:`port` (the fabric opens the port to them; the
    example CLI's issuer)."""
    return {"HEARTH_FABRIC_OPEN_PORTS": str(port), "HEARTH_EXAMPLE_ISSUER": issuer(port, bridge_ip)}


def start_idp(settings: Settings, port: int, auto_approve: bool) -> tuple[IdpServer, IdpState]:
    """The example IdP on BRIDGE_IP:`port` inside the fabric namespace; `auto_approve=False`: device codes wait for
    `browse` to approve them. Stop it with `server.shutdown(); server.server_close()`."""
    sock = socket_in_netns(settings.dial_netns)  # the loopback driver (tests): the controller's own namespace
    sock.bind((str(settings.bridge_ip), port))
    state = IdpState(auto_approve=auto_approve)
    server = IdpServer(sock, state)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


@contextlib.asynccontextmanager
async def running_idp(settings: Settings, port: int, auto_approve: bool) -> AsyncIterator[IdpState]:
    """`start_idp` for the length of an `async with` (the fabric namespace must be up: start the controller first)."""
    server, state = await asyncio.to_thread(start_idp, settings, port, auto_approve)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def browse(netns: str | None, url: str, form: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """One request of the person's browser (GET, or POST of a form) to the IdP inside the fabric namespace."""
    parts = urllib.parse.urlsplit(url)
    sock = socket_in_netns(netns)
    sock.settimeout(10)
    sock.connect((parts.hostname or "", parts.port or 80))
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=10)
    conn.sock = sock
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if form is None:
            conn.request("GET", target)
        else:
            body = urllib.parse.urlencode(form)
            conn.request("POST", target, body, {"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()
        sock.close()


def approve_and_read_code(netns: str | None, url: str) -> str:
    """Approve on the provider's page, follow the redirect to its code page, copy the code."""
    _, _, page = browse(netns, url)
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
    status, headers, _ = browse(netns, url.split("/authorize")[0] + "/approve", fields)
    assert status == 302, status
    _, _, shown = browse(netns, headers["location"])
    m = re.search(r"<code id=code>([^<]+)</code>", shown)
    assert m is not None, shown
    return m.group(1)
