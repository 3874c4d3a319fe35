"""The internet stand-in's HTTPS pages (hearth/standins/internet.py): what a person and a CLI meet at a provider.

- Any GET carrying an OAuth authorization request (`response_type=code` and `redirect_uri`) is answered with the
  provider's authorize page: one button, "Authorize", that fills the whole page (a click anywhere on the page in the
  sandbox's desktop hits it), which redirects to the CLI's `redirect_uri` with a code and the request's state.
- The pages that show a code to paste (Claude's `platform.claude.com/oauth/code/callback`: `code#state`; Gemini's
  `codeassist.google.com/authcode`: the code), in `<code id=code>`.
- Codex's device page (`auth.openai.com/codex/device`): a field for the code the CLI shows and a button; the right
  code approves the device authorization the CLI polls for.
- Everything else: the token, device-code and API endpoints of hearth/standins/standin.py's responder (JSON).
- The example provider (its own name): the example IdP of hearth_example/idp.py, with the same full-page
  "Authorize" button on its consent page.
Every request is recorded with the address it came from.
"""

from __future__ import annotations

import html
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hearth.standins.standin import DEVICE_USER_CODE, Net, Responder, default_responder
from hearth_agent.server import NoLookupBind
from hearth_example import idp

CODE = "test-code"  # the authorization code the stand-in issues (its token endpoints take any code but one)
APPROVE = "/__standin/approve"
DEVICE_APPROVE = "/__standin/device"
PAGE_STYLE = "margin:0;font:28px sans-serif"
BUTTON_STYLE = (
    "position:fixed;left:0;top:0;width:100vw;height:100vh;border:0;margin:0;"
    "background:#1a7f37;color:#fff;font:bold 64px sans-serif;cursor:pointer"
)


@dataclass
class Seen:
    method: str
    host: str
    path: str
    peer: str
    user_agent: str
    t: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        return f"{self.method} {self.host}{self.path.split('?')[0]}"


@dataclass
class Traffic:
    """Every HTTPS request the stand-in answered, in order."""

    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Seen) -> None:
        with self.lock:
            self.seen.append(s)

    def lines(self) -> list[str]:
        with self.lock:
            return [s.line() for s in self.seen]

    def where(self, host: str, path: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.host == host and s.path.startswith(path)]


def authorize_page(action: str, fields: dict[str, str], method: str = "get") -> bytes:
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    return (
        "<!doctype html><meta charset=utf-8><title>Authorize</title>"
        f"<body style='{PAGE_STYLE}'><form method={method} action='{html.escape(action)}'>{hidden}"
        f"<button id=authorize style='{BUTTON_STYLE}'>Authorize</button></form>"
    ).encode()


REPORT = "/__standin/report"
PROBE_TIMEOUT_MS = 4000


def probe_script(targets: list[str]) -> bytes:
    """A hostile page's part: try each URL (no-cors; given up after PROBE_TIMEOUT_MS), then POST to REPORT what
    each came to ('reached' or the error), so a test sees the page really tried. Empty without targets."""
    if not targets:
        return b""
    script = (
        "<script>(async () => { const targets = " + json.dumps(targets) + "; const out = {};"
        "await Promise.all(targets.map(async (u) => { const c = new AbortController();"
        f"const t = setTimeout(() => c.abort(), {PROBE_TIMEOUT_MS});"
        "try { await fetch(u, {mode: 'no-cors', cache: 'no-store', signal: c.signal}); out[u] = 'reached'; }"
        "catch (e) { out[u] = 'failed: ' + e.name; } finally { clearTimeout(t); } }));"
        f"await fetch('{REPORT}', {{method: 'POST', body: JSON.stringify(out)}}); }})();</script>"
    )
    return script.encode()


def code_page(code: str) -> bytes:
    return (
        "<!doctype html><meta charset=utf-8><title>Your code</title>"
        f"<body style='{PAGE_STYLE};padding:2em'><p>Paste this code into your CLI:</p>"
        f"<p><code id=code>{html.escape(code)}</code></p>"
    ).encode()


def device_page(action: str) -> bytes:
    return (
        "<!doctype html><meta charset=utf-8><title>Enter your code</title>"
        f"<body style='{PAGE_STYLE};padding:2em'><h1>Enter the code your CLI shows</h1>"
        f"<form method=post action='{action}'><input name=user_code id=user_code autofocus>"
        "<button id=approve>Continue</button></form>"
    ).encode()


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _html(self, body: bytes, code: int = 200) -> None:
        self._send(code, body, "text/html; charset=utf-8")

    def _record(self, traffic: Traffic) -> None:
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        traffic.add(Seen(self.command, host, self.path, self.client_address[0], self.headers.get("User-Agent", "")))


class ProviderHandler(_Base):
    """The real providers' hosts (one leaf certificate for all of them)."""

    server: ProviderServer

    def _any(self) -> None:
        st = self.server
        self._record(st.traffic)
        body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if self.command == "POST" and self.headers.get("Content-Type", "").startswith("application/x-www-form"):
            form = dict(urllib.parse.parse_qsl(body.decode(errors="replace")))
        else:
            form = {}
        if self.command == "GET" and q.get("response_type") == "code" and q.get("redirect_uri"):
            return self._html(authorize_page(APPROVE, {"redirect_uri": q["redirect_uri"], "state": q.get("state", "")}))
        if url.path == APPROVE and q.get("redirect_uri"):
            target = q["redirect_uri"] + "?" + urllib.parse.urlencode({"code": CODE, "state": q.get("state", "")})
            return self._send(302, b"", "text/plain", {"Location": target})
        if self.command == "GET" and host == "platform.claude.com" and url.path == "/oauth/code/callback":
            return self._html(code_page(f"{q.get('code', '')}#{q.get('state', '')}"))
        if self.command == "GET" and host == "codeassist.google.com" and url.path == "/authcode":
            return self._html(code_page(q.get("code", "")))
        if self.command == "GET" and host == "auth.openai.com" and url.path == "/codex/device":
            return self._html(device_page(DEVICE_APPROVE))
        if host == "accounts.google.com" and url.path == "/ListAccounts":
            # Chromium's own account check on Google's sign-in host: "no accounts" (a 404 there is retried with
            # backoff while a navigation to accounts.google.com waits on it)
            return self._send(200, b'["gaia.l.a.r",[]]', "application/json; charset=utf-8")
        if url.path == DEVICE_APPROVE:
            if form.get("user_code", "").strip().upper() != DEVICE_USER_CODE:
                return self._html(b"<p id=result>Unknown or expired code</p>", 400)
            st.net.approved.set()
            return self._html(b"<p id=result>Approved. Return to your CLI.</p>")
        code, out = st.responder(st.net, self.command, host, self.path, body)
        if isinstance(out, Iterator):
            raw = b"".join(out)
        else:
            raw = out if isinstance(out, bytes) else json.dumps(out).encode()
        self._send(code, raw, "text/event-stream" if isinstance(out, (bytes, Iterator)) else "application/json")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any


class ProviderServer(NoLookupBind, ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], net: Net, traffic: Traffic, responder: Responder) -> None:
        self.net, self.traffic, self.responder = net, traffic, responder
        super().__init__(addr, ProviderHandler, bind_and_activate=False)


class ExampleHandler(_Base, idp.Handler):
    """The example IdP, its consent page made of one full-page "Authorize" button (the e-mail field is left out)."""

    server: ExampleServer

    def do_GET(self) -> None:
        self._record(self.server.traffic)
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/authorize" and q.get("response_type") == "code" and q.get("redirect_uri"):
            self.server.state.log("authorize_page", user_agent=self.headers.get("User-Agent", ""))
            return self._html(authorize_page("/approve", q, method="post") + probe_script(self.server.probes))
        if url.path == "/device":
            return self._html(device_page("/device/approve"))
        return idp.Handler.do_GET(self)

    def _json(self, code: int, obj: Any) -> None:
        """The IdP names its device page with http:// (it serves plain HTTP elsewhere); here it is served on TLS."""
        uri = obj.get("verification_uri") if isinstance(obj, dict) else None
        if isinstance(uri, str) and uri.startswith("http://"):
            obj = {**obj, "verification_uri": "https://" + uri.removeprefix("http://")}
        idp.Handler._json(self, code, obj)

    def do_POST(self) -> None:
        self._record(self.server.traffic)
        if urllib.parse.urlsplit(self.path).path == REPORT:
            raw = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 65536))
            with self.server.state.lock:
                self.server.reports.append(json.loads(raw or b"{}"))
            return self._send(204, b"", "text/plain")
        return idp.Handler.do_POST(self)


class ExampleServer(idp.IdpServer):
    def __init__(self, addr: tuple[str, int], state: idp.IdpState, traffic: Traffic) -> None:
        self.traffic = traffic
        self.state = state
        self.probes: list[str] = []  # URLs the consent page tries to reach (a hostile page; see probe_script)
        self.reports: list[dict[str, str]] = []  # what each probe came to, as the page saw it
        ThreadingHTTPServer.__init__(self, addr, ExampleHandler, bind_and_activate=False)


__all__ = ["ExampleServer", "ProviderServer", "Seen", "Traffic", "default_responder"]
