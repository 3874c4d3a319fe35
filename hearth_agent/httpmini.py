"""The part of `http.server` the agent's API uses (hearth_agent/server.py), without its imports.

`http.server` imports email.utils, html, mimetypes and datetime (for file serving, HTML error pages and the Date
header): ≈0.6 MiB of every agent's memory, in every sandbox (issue 25). This is the same request handling for the
agent's JSON API: the request line, up to MAX_HEADERS header lines (looked up without regard to case), HTTP/1.0
(closed after the answer, unless keep-alive) and HTTP/1.1 (kept alive, unless `Connection: close`), `Expect:
100-continue`, `do_<METHOD>` dispatch (501 without one), the socket timeout `timeout`, and the same
`send_response` / `send_header` / `end_headers` / `close_connection` / `rfile` / `wfile` / `headers` / `path` names.
Errors before a route runs are answered as JSON `{"error": ...}` with `Connection: close`.
"""

from __future__ import annotations

import json
import socketserver
import time
from typing import Any

MAX_LINE = 65536
MAX_HEADERS = 100
REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Headers:
    """A request's headers; `get` ignores case, and the first of repeated names wins (as email.message's does)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        self._by_name: dict[str, str] = {}
        for name, value in items:
            self._by_name.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._by_name.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return self._by_name.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name


def http_date(now: float | None = None) -> str:
    """RFC 9110's IMF-fixdate, without the locale (strftime's %a/%b follow it)."""
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BaseHTTPRequestHandler(socketserver.StreamRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "hearth-agent"
    wbufsize = 0  # the status line and headers are gathered and written at end_headers, the body by the handler

    command = path = ""
    request_version = "HTTP/1.0"
    close_connection = True
    headers: Headers

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        self._buffer: list[bytes] = []
        try:
            line = self.rfile.readline(MAX_LINE + 1)
        except TimeoutError:
            self.close_connection = True
            return
        if not line:
            self.close_connection = True
            return
        try:
            if len(line) > MAX_LINE:
                raise BadRequest(414, "request line too long")
            self._parse(line)
        except BadRequest as exc:
            self.send_error(exc.status, str(exc))
            return
        except TimeoutError:
            self.close_connection = True
            return
        method = getattr(self, f"do_{self.command}", None)
        if method is None:
            self.send_error(501, f"unsupported method {self.command!r}")
            return
        method()
        self.wfile.flush()

    def _parse(self, line: bytes) -> None:
        words = line.decode("iso-8859-1").rstrip("\r\n").split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            raise BadRequest(400, "bad request line")
        self.command, self.path, self.request_version = words
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            raise BadRequest(400, f"unsupported version {self.request_version!r}")
        items: list[tuple[str, str]] = []
        while True:
            raw = self.rfile.readline(MAX_LINE + 1)
            if len(raw) > MAX_LINE:
                raise BadRequest(431, "header line too long")
            if raw in (b"\r\n", b"\n", b""):
                break
            if len(items) >= MAX_HEADERS:
                raise BadRequest(431, f"more than {MAX_HEADERS} headers")
            name, colon, value = raw.decode("iso-8859-1").partition(":")
            if not colon or not name.strip() or name != name.strip():
                raise BadRequest(400, "bad header line")
            items.append((name, value.strip()))
        self.headers = Headers(items)
        keep = self.request_version == "HTTP/1.1" and self.protocol_version == "HTTP/1.1"
        conn = (self.headers.get("Connection") or "").lower()
        if "close" in conn:
            keep = False
        elif "keep-alive" in conn and self.protocol_version == "HTTP/1.1":
            keep = True
        self.close_connection = not keep
        if (self.headers.get("Expect") or "").lower() == "100-continue" and self.request_version == "HTTP/1.1":
            self.wfile.write(f"{self.protocol_version} 100 Continue\r\n\r\n".encode())

    def send_response(self, code: int, message: str | None = None) -> None:
        self.log_request(code)
        reason = message if message is not None else REASONS.get(code, "")
        self._buffer = [f"{self.protocol_version} {code} {reason}\r\n".encode("latin-1", "strict")]
        self.send_header("Server", self.server_version)
        self.send_header("Date", http_date())

    def send_header(self, keyword: str, value: str) -> None:
        self._buffer.append(f"{keyword}: {value}\r\n".encode("latin-1", "strict"))
        if keyword.lower() == "connection":
            if value.lower() == "close":
                self.close_connection = True
            elif value.lower() == "keep-alive":
                self.close_connection = False

    def end_headers(self) -> None:
        self._buffer.append(b"\r\n")
        self.wfile.write(b"".join(self._buffer))
        self._buffer = []

    def send_error(self, code: int, message: str = "") -> None:
        raw = json.dumps({"error": message or REASONS.get(code, "")}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(raw)
        self.close_connection = True

    def log_request(self, code: int) -> None:
        self.log_message('"%s %s %s" %s', self.command, self.path, self.request_version, code)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the agent logs requests itself (hearth_agent/server.py)


class ThreadingHTTPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
