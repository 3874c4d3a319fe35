"""Example OAuth 2.0 authorization server, in-memory, stdlib only: authorization code + PKCE (S256 only) with a
loopback redirect or the /code page (shows the code to paste back), and the device authorization grant
(RFC 8628: POST /device/code, the /device page where the person enters the user code, polling at /token).

It is also the example provider's "model API" (hearth_example/modelapi.py): `POST /v1/model/stream` answers a
prompt as streamed JSON lines for a valid access token; `grant_type=refresh_token` at /token rotates the refresh
token (the old one is refused after); `POST /test/expire` and `POST /test/revoke` let tests expire or revoke every
token issued so far.

python3 -m hearth_example.idp --listen 192.168.100.1:9400 [--auto-approve]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hearth_agent.server import NoLookupBind
from hearth_example import modelapi


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    expires: float


@dataclass
class Device:
    client_id: str
    user_code: str
    expires: float
    approved: bool = False


@dataclass
class IdpState:
    auto_approve: bool = False
    codes: dict[str, Grant] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)  # device_code → pending device authorization
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    access: dict[str, float] = field(default_factory=dict)  # access token → expiry (time.time())
    refresh: set[str] = field(default_factory=set)  # refresh tokens not yet used (each works once: rotation)
    revoked: set[str] = field(default_factory=set)  # tokens revoked by /test/revoke

    def issue(self) -> dict[str, Any]:
        """A new token pair, remembered (the model API and the refresh grant check them)."""
        tokens = _tokens()
        with self.lock:
            self.access[tokens["access_token"]] = time.time() + float(tokens["expires_in"])
            self.refresh.add(tokens["refresh_token"])
        return tokens

    def log(self, kind: str, **detail: Any) -> None:
        with self.lock:
            self.events.append({"t": time.time(), "kind": kind, **detail})


def _tokens() -> dict[str, Any]:
    return {
        "access_token": "ex-at-" + secrets.token_urlsafe(24),
        "refresh_token": "ex-rt-" + secrets.token_urlsafe(24),
        "token_type": "Bearer",
        "expires_in": 3600,
    }


class Handler(BaseHTTPRequestHandler):
    server: IdpServer
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

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        st = self.server.state
        if url.path == "/events":
            with st.lock:
                return self._json(200, st.events)
        if url.path == "/code":  # the paste-code redirect target: shows the code for the person to copy
            st.log("code_page")
            page = (
                "<!doctype html><meta charset=utf-8><title>Example sign-in code</title>"
                "<body style='font:20px sans-serif;padding:3em'><p>Paste this code into the CLI:</p>"
                f"<p><code id=code>{html.escape(q.get('code', ''))}</code></p>"
            )
            return self._send(200, page.encode(), "text/html; charset=utf-8")
        if url.path == "/device":
            page = (
                "<!doctype html><meta charset=utf-8><title>Example device sign-in</title>"
                "<body style='font:20px sans-serif;padding:3em'><h1>Enter the code your CLI shows</h1>"
                "<form method=post action=/device/approve><input name=user_code id=user_code>"
                "<button id=approve>Approve</button></form>"
            )
            return self._send(200, page.encode(), "text/html; charset=utf-8")
        if url.path != "/authorize":
            return self._json(404, {"error": "not_found"})
        missing = [k for k in ("client_id", "redirect_uri", "code_challenge", "state") if not q.get(k)]
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or missing:
            return self._json(400, {"error": "invalid_request", "missing": missing})
        st.log("authorize_page", user_agent=self.headers.get("User-Agent", ""), client_id=q["client_id"])
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in q.items()
        )
        auto = "<script>setTimeout(()=>document.forms[0].submit(), 300)</script>" if st.auto_approve else ""
        page = (
            "<!doctype html><meta charset=utf-8><title>Example sign-in</title>"
            "<body style='font:20px sans-serif;padding:3em;background:#fff7e0'>"
            f"<h1>Example provider</h1><p>Allow <b>{html.escape(q['client_id'])}</b> to sign in?</p>"
            f"<form method=post action=/approve>{hidden}"
            "<p><label for=email>E-mail</label><br><input type=email name=email id=email autofocus "
            "autocomplete=email style='font:20px sans-serif;width:16em'></p>"
            f"<button id=approve>Approve</button></form>{auto}"
        )
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _form(self) -> dict[str, str]:
        n = int(self.headers.get("Content-Length") or 0)
        if n > 65536:
            raise ValueError("body too large")
        return dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))

    def do_POST(self) -> None:
        st = self.server.state
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith(("/v1/model/", "/test/")):
            return modelapi.handle(self, st, path)
        try:
            form = self._form()
        except ValueError:
            return self._json(413, {"error": "too_large"})
        path = urllib.parse.urlsplit(self.path).path
        if path == "/approve":
            code = secrets.token_urlsafe(24)
            with st.lock:
                st.codes[code] = Grant(
                    form["client_id"], form["redirect_uri"], form["code_challenge"], time.time() + 120
                )
            st.log("approved", client_id=form["client_id"], email=form.get("email", ""))
            target = form["redirect_uri"] + "?" + urllib.parse.urlencode({"code": code, "state": form["state"]})
            return self._send(302, b"", "text/plain", {"Location": target})
        if path == "/device/code":
            device = secrets.token_urlsafe(24)
            alphabet = "BCDFGHJKLMNPQRSTVWXZ23456789"
            user = "".join(secrets.choice(alphabet) for _ in range(8))
            user = f"{user[:4]}-{user[4:]}"
            with st.lock:
                st.devices[device] = Device(form.get("client_id", ""), user, time.time() + 300)
            st.log("device_code", client_id=form.get("client_id", ""))
            host = self.headers.get("Host", "")
            return self._json(
                200,
                {
                    "device_code": device,
                    "user_code": user,
                    "verification_uri": f"http://{host}/device",
                    "expires_in": 300,
                    "interval": 1,
                },
            )
        if path == "/device/approve":
            wanted = form.get("user_code", "").strip().upper()
            with st.lock:
                match = [d for d in st.devices.values() if d.user_code == wanted and d.expires > time.time()]
                for d in match:
                    d.approved = True
            st.log("device_approved" if match else "device_refused")
            if not match:
                return self._send(400, b"<p>Unknown or expired code</p>", "text/html; charset=utf-8")
            return self._send(200, b"<p>Approved. Return to your CLI.</p>", "text/html; charset=utf-8")
        if path == "/token" and form.get("grant_type") == "refresh_token":
            return self._json(*modelapi.refresh(st, form.get("refresh_token", "")))
        if path == "/token" and form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
            with st.lock:
                dev = st.devices.get(form.get("device_code", ""))
                if dev is not None and dev.approved:
                    del st.devices[form.get("device_code", "")]
            if dev is None or dev.expires < time.time() or dev.client_id != form.get("client_id"):
                return self._json(400, {"error": "expired_token" if dev else "invalid_grant"})
            if not dev.approved:
                return self._json(400, {"error": "authorization_pending"})
            st.log("token_issued", client_id=dev.client_id)
            return self._json(200, st.issue())
        if path == "/token":
            with st.lock:
                grant = st.codes.pop(form.get("code", ""), None)
            if (
                form.get("grant_type") != "authorization_code"
                or grant is None
                or grant.expires < time.time()
                or grant.redirect_uri != form.get("redirect_uri")
                or grant.client_id != form.get("client_id")
                or s256(form.get("code_verifier", "")) != grant.challenge
            ):
                st.log("token_refused")
                return self._json(400, {"error": "invalid_grant"})
            st.log("token_issued", client_id=grant.client_id)
            return self._json(200, st.issue())
        return self._json(404, {"error": "not_found"})


class IdpServer(NoLookupBind, ThreadingHTTPServer):
    """A thread per connection, and a listen backlog for a node's worth of sandboxes signing in at once (the
    socketserver default of 5 refused or stalled connections beyond a handful: SYNs dropped, 1 s retransmits)."""

    daemon_threads = True
    request_queue_size = 4096  # capped by net.core.somaxconn (4096 by default since Linux 5.4)

    def __init__(self, sock_or_addr: socket.socket | tuple[str, int], state: IdpState) -> None:
        self.state = state
        if isinstance(sock_or_addr, socket.socket):
            super().__init__(sock_or_addr.getsockname()[:2], Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = sock_or_addr
            self.server_address = sock_or_addr.getsockname()[:2]
            self.socket.listen(self.request_queue_size)
        else:
            super().__init__(sock_or_addr, Handler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", default="127.0.0.1:9400")
    ap.add_argument("--auto-approve", action="store_true")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = IdpServer((host, int(port)), IdpState(auto_approve=args.auto_approve))
    print(f"example IdP on http://{args.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
