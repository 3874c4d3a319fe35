"""The example IdP serves a node's worth of sandboxes at once: 200 connections opened while it is not yet accepting
are all established by the kernel (its listen backlog holds them; the socketserver default of 5 dropped the SYNs of
all but six), then each gets its answer — device codes, every one different — over loopback, in both ways of
starting it (own address, or a socket made elsewhere, as the benches and tests do inside a namespace)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hearth_example.idp import IdpServer, IdpState

CONNECTIONS = 200
DEADLINE = 60.0  # generous: a shared machine; a dropped SYN is not retried for seconds, and then only 6 more


def _made_socket() -> IdpServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return IdpServer(sock, IdpState())


@pytest.fixture(params=["address", "socket"])
def idle_server(request: pytest.FixtureRequest) -> Iterator[IdpServer]:
    """An IdP listening but not yet accepting (serve_forever not started)."""
    server = IdpServer(("127.0.0.1", 0), IdpState()) if request.param == "address" else _made_socket()
    try:
        yield server
    finally:
        server.server_close()


def _established(socks: list[socket.socket], deadline: float) -> int:
    """Wait for every non-blocking connect to finish (or the deadline); how many were established."""
    pending = {s.fileno(): s for s in socks}
    done = 0
    poll = select.poll()
    for fd in pending:
        poll.register(fd, select.POLLOUT)
    while pending and time.monotonic() < deadline:
        for fd, _ in poll.poll(500):
            sock = pending.pop(fd)
            poll.unregister(fd)
            done += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return done


def _ask(sock: socket.socket, host: str, out: list[dict[str, object]], lock: threading.Lock) -> None:
    sock.setblocking(True)
    sock.settimeout(DEADLINE)
    body = b"client_id=example"
    sock.sendall(
        b"POST /device/code HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    with lock:
        out.append(json.loads(payload))


def test_two_hundred_connections_at_once_are_all_served(idle_server: IdpServer) -> None:
    host = "{}:{}".format(*idle_server.server_address[:2])
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(CONNECTIONS)]
    serving = threading.Thread(target=idle_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    try:
        for s in socks:
            s.setblocking(False)
            assert s.connect_ex(idle_server.server_address[:2]) in (0, 115)  # 115: EINPROGRESS
        assert _established(socks, time.monotonic() + DEADLINE) == CONNECTIONS  # all queued, none accepted yet
        serving.start()
        answers: list[dict[str, object]] = []
        lock = threading.Lock()
        askers = [threading.Thread(target=_ask, args=(s, host, answers, lock)) for s in socks]
        for t in askers:
            t.start()
        for t in askers:
            t.join(DEADLINE)
        assert len(answers) == CONNECTIONS
        assert len({a["device_code"] for a in answers}) == CONNECTIONS
        assert all(a["verification_uri"] == f"http://{host}/device" for a in answers)
        assert len(idle_server.state.devices) == CONNECTIONS
    finally:
        if serving.is_alive():
            idle_server.shutdown()
        for s in socks:
            s.close()
