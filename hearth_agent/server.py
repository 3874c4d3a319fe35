"""The agent's HTTP API on <sandbox ip>:<agent port>.

`GET /health` is open (it holds no secrets); everything else needs `Authorization: Bearer <per-sandbox secret>`.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("hearth_agent")
MAX_BODY = 1 << 20

Route = Callable[[dict[str, Any]], tuple[int, Any]]


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], secret: str, health: Callable[[], dict[str, Any]]) -> None:
        super().__init__(addr, Handler)
        self.secret = secret
        self.health = health
        self.routes: dict[tuple[str, str], Route] = {}

    def route(self, method: str, path: str, fn: Route) -> None:
        self.routes[(method, path)] = fn


class Handler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _reply(self, code: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _authorized(self) -> bool:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.server.secret.encode())

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        if method == "GET" and path == "/health":
            return self._reply(200, self.server.health())
        if not self._authorized():
            return self._reply(401, {"error": "missing or wrong agent secret"})
        fn = self.server.routes.get((method, path))
        if fn is None:
            return self._reply(404, {"error": f"no route {method} {path}"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._reply(413, {"error": "body too large"})
        try:
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            return self._reply(400, {"error": f"invalid JSON: {exc}"})
        try:
            code, out = fn(body)
        except (KeyError, ValueError, TypeError) as exc:
            code, out = 400, {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            log.exception("route failed")
            code, out = 500, {"error": f"{type(exc).__name__}"}
        self._reply(code, out)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")
