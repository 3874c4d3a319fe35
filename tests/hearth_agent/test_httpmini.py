"""The agent's small HTTP server (hearth_agent/httpmini.py): what the agent API relies on from http.server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hearth_agent.httpmini import BaseHTTPRequestHandler, ThreadingHTTPServer, http_date


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5.0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or "0")
        body = json.loads(self.rfile.read(length)) if length else None
        raw = json.dumps({"path": self.path, "auth": self.headers.get("AUTHORIZATION"), "body": body}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST


@pytest.fixture
def port() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def read_answer(f: Any) -> tuple[int, dict[str, str], bytes]:
    status = int(f.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", "0")))


def test_http11_keeps_the_connection_for_the_next_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
        for n in range(2):
            body = json.dumps({"n": n}).encode()
            head = f"POST /v1/x?y={n} HTTP/1.1\r\nHost: a\r\nauthorization: Bearer s\r\nContent-Length: {len(body)}\r\n"
            s.sendall(head.encode() + b"\r\n" + body)
            status, headers, raw = read_answer(f)
            assert status == 200 and "date" in headers
            assert json.loads(raw) == {"path": f"/v1/x?y={n}", "auth": "Bearer s", "body": {"n": n}}


def test_http10_is_closed_after_the_answer(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
        s.sendall(b"GET /health HTTP/1.0\r\nConnection: close\r\n\r\n")
        status, _, raw = read_answer(f)
        assert status == 200 and json.loads(raw)["path"] == "/health"
        assert f.read() == b""  # closed


def test_expect_100_continue_is_answered_before_the_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
        s.sendall(b"POST /p HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert f.readline().split()[1] == b"100" and f.readline() == b"\r\n"
        s.sendall(b"{}")
        assert read_answer(f)[0] == 200


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"BREW /pot HTTP/1.1\r\n\r\n", 501),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_a_bad_request_is_answered_in_json_and_closed(port: int, request_head: bytes, status: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
        s.sendall(request_head)
        got, headers, raw = read_answer(f)
        assert got == status and headers["connection"] == "close"
        assert "error" in json.loads(raw)
        assert f.read() == b""


def test_the_date_header_does_not_follow_the_locale() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
