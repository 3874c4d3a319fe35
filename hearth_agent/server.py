"""The agent's HTTP API on <sandbox ip>:<agent port>.

`GET /health` is open (it holds no secrets); `GET /health?wait=<seconds>` answers once the sandbox is ready (its
display runs; at most MAX_WAIT seconds) — the controller's readiness by notification instead of polling; every other request needs `Authorization: Bearer <per-sandbox secret>`
(compared in constant time) — an unauthenticated caller learns nothing, not even which routes exist.
Extensions add routes with `AgentServer.route`; a route returns (status, JSON body) or raises `HttpError`.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from _operator import _compare_digest  # hmac.compare_digest itself, without hashlib's OpenSSL (≈0.5 MiB)
from collections.abc import Callable
from typing import Any

from hearth_agent.contract import routes
from hearth_agent.contract.document import Identity
from hearth_agent.httpmini import BaseHTTPRequestHandler, ThreadingHTTPServer
from hearth_agent.wakeup import Waker, wait_readable

log = logging.getLogger("hearth_agent")
MAX_BODY = 1 << 20
IO_TIMEOUT = 10.0  # per socket operation: a stalled client never holds a thread for long
MAX_WAIT = 10.0  # GET /health?wait=: the longest a readiness request is held

Route = Callable[[dict[str, Any]], tuple[int, Any]]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NoLookupBind(socketserver.TCPServer):
    """HTTPServer's bind without its `socket.getfqdn(host)`: that reverse DNS lookup of a sandbox-side address goes
    to a resolver the sandbox may not reach, and stalled the agent's start by the resolver timeout (5 s)."""

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class AgentServer(NoLookupBind, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog (socketserver's default, 5, reset a burst of 100 connects)

    def __init__(self, addr: tuple[str, int], identity: Identity | str, health: Callable[[], dict[str, Any]]) -> None:
        """`identity`: who the agent is (a bare secret: an agent with no session, any provider definition)."""
        self._identity = self._checked(Identity(identity) if isinstance(identity, str) else identity)
        self.health = health
        self.routes: dict[tuple[str, str], Route] = {}
        self.wait_ready: Callable[[float], object] | None = None  # blocks until ready or the timeout given
        self._wake = Waker()
        self._closing = False
        self._served = threading.Event()
        self._served.set()
        super().__init__(addr, Handler)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """socketserver's loop without its poll (`poll_interval` is ignored): it blocks on the listening socket and
        on a waker that `shutdown` pokes, so an idle agent's HTTP thread never wakes."""
        self._served.clear()
        try:
            while not self._closing:
                ready = wait_readable([self.fileno(), self._wake.fileno()], None)
                self._wake.drain()
                if not self._closing and self.fileno() in ready:
                    self.handle_request()  # the connection is pending: accepts it without waiting
        finally:
            self._closing = False
            self._served.set()

    def shutdown(self) -> None:
        self._closing = True
        self._wake.wake()
        self._served.wait()

    def server_close(self) -> None:
        super().server_close()
        self._wake.close()

    @staticmethod
    def _checked(identity: Identity) -> Identity:
        if not identity.secret:
            raise ValueError("the agent needs a secret")
        return identity

    @property
    def identity(self) -> Identity:
        """Who the agent is now: the secret it answers to and pushes with, its session, the definitions it may run."""
        return self._identity

    def reidentify(self, identity: Identity) -> None:
        """The identity replaced whole (a warm-pool hand-out: hearth_agent/personalise.py): from now on only its
        secret is accepted."""
        self._identity = self._checked(identity)

    def route(self, method: str, path: str, fn: Route) -> None:
        self.routes[(method.upper(), path)] = fn

    def authorized(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        ok = _compare_digest(value.strip().encode(errors="replace"), self._identity.secret.encode())
        return scheme.lower() == "bearer" and ok


class Handler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"
    timeout = IO_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        return  # requests are logged by _handle, without headers

    def _reply(self, code: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-store")
        if code >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> dict[str, Any]:
        raw_length = self.headers.get("Content-Length") or "0"
        if not raw_length.isdigit():
            raise HttpError(400, "invalid Content-Length")
        length = int(raw_length)
        if length > MAX_BODY:
            raise HttpError(413, "body too large")
        if not length:
            return {}
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise HttpError(400, f"invalid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        return body

    def _handle(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        if method == "GET" and path == routes.HEALTH:
            wait = _wait_seconds(query)
            if wait > 0 and self.server.wait_ready is not None:
                self.server.wait_ready(wait)
            self._reply(200, self.server.health())
            return
        if not self.server.authorized(self.headers.get("Authorization")):
            log.warning("request refused: missing or wrong secret", extra={"method": method, "path": path})
            self._reply(401, {"error": "missing or wrong agent secret"})
            return
        fn = self.server.routes.get((method, path))
        try:
            if fn is None:
                raise HttpError(404, f"no route {method} {path}")
            code, out = fn(self._body())
        except HttpError as exc:
            code, out = exc.status, {"error": exc.message}
        except (KeyError, ValueError, TypeError) as exc:
            code, out = 400, {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            log.exception("route failed", extra={"method": method, "path": path})
            code, out = 500, {"error": type(exc).__name__}
        log.info("request", extra={"method": method, "path": path, "status": code})
        self._reply(code, out)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def _wait_seconds(query: str) -> float:
    """`wait=<seconds>` of a query string, within [0, MAX_WAIT]; 0 when absent or not a number."""
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "wait":
            try:
                return min(max(float(value), 0.0), MAX_WAIT)
            except ValueError:
                return 0.0
    return 0.0
