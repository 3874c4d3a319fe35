"""Example provider CLI: behaves like the real ones, in each of their sign-in flows.

    HEARTH_EXAMPLE_ISSUER=http://192.168.100.1:9400 python3 -m hearth_example.cli login [--flow F]

Asks to continue (a PTY prompt the agent answers), then per flow:
- `loopback` (default): prints the sign-in URL, opens it with $BROWSER when set, waits for the redirect on a
  localhost callback, exchanges the code with PKCE (like `codex login`).
- `paste_code`: prints a URL whose redirect is the IdP's /code page (it shows the code), asks "Paste the
  authorization code:", exchanges it; a refused code prints the IdP's error and asks again — with a new link when
  HEARTH_EXAMPLE_RENEW=1 (like Claude Code and Gemini CLI).
- `device_code`: asks the IdP for a device code, prints "open <issuer>/device and enter the code XXXX-XXXX",
  polls the token endpoint until the person approved (like `codex login --device-auth`).
Then writes ~/.example/credentials.json (0600).

`prompt --json …` answers a prompt through the example model API with stream-JSON lines (hearth_example/prompt.py).
"""

from __future__ import annotations

import os
import sys

# Everything else is imported where a flow needs it: a CLI waiting for the person (the paste_code prompt, the
# device-code poll) holds only what it used so far — a node runs 1,000 of them (bench/direct_ramp.py). Not even
# typing (it brings re, collections, enum: ≈2 MiB of a waiting CLI): mypy reads any `TYPE_CHECKING` constant.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLIENT_ID = "hearth-example-cli"


FLOWS = ("loopback", "paste_code", "device_code")
USAGE = "usage: python3 -m hearth_example.cli login [--flow loopback|paste_code|device_code]"


def _post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode())
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def _save(issuer: str, tokens: dict[str, Any]) -> int:
    import json
    from pathlib import Path

    path = Path.home() / ".example" / "credentials.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"issuer": issuer, **tokens}, f)
    os.replace(tmp, path)
    print("Signed in.", flush=True)
    return 0


def _token(n: int) -> str:
    """secrets.token_urlsafe(n) without importing secrets (hmac, OpenSSL's libcrypto: megabytes per waiting CLI)."""
    return _b64url(os.urandom(n))


def _b64url(data: bytes) -> str:
    """base64.urlsafe_b64encode(data) without its padding; binascii only (base64 imports re: ≈1 MiB with what re
    brings, in every waiting CLI)."""
    import binascii

    return binascii.b2a_base64(data, newline=False).translate(bytes.maketrans(b"+/", b"-_")).rstrip(b"=").decode()


def _sha256(data: bytes) -> bytes:
    try:
        import _sha256  # type: ignore[import-not-found]  # CPython's own, small; hashlib maps OpenSSL's libcrypto

        digest: bytes = _sha256.sha256(data).digest()
    except ImportError:  # another build: the same digest from hashlib
        import hashlib

        digest = hashlib.sha256(data).digest()
    return digest


def _pkce() -> tuple[str, str]:
    verifier = _token(48)
    return verifier, _b64url(_sha256(verifier.encode()))


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def _urlencode(query: dict[str, str]) -> str:
    """urllib.parse.urlencode(query) (quote_plus of each key and value), without importing urllib.parse (re,
    ipaddress, collections: ≈0.5 MiB of a waiting CLI)."""

    def quote(s: str) -> str:
        return "".join(c if c in _SAFE else "+" if c == " " else "".join(f"%{b:02X}" for b in c.encode()) for c in s)

    return "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())


def _authorize_url(issuer: str, redirect: str, state: str, challenge: str) -> str:
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": redirect,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return issuer + "/authorize?" + _urlencode(query)


def _token_form(code: str, redirect: str, verifier: str) -> dict[str, str]:
    """The authorization-code exchange (with the PKCE verifier) at the token endpoint."""
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect,
        "client_id": CLIENT_ID,
        "code_verifier": verifier,
    }


def paste_code(issuer: str) -> int:
    """With HEARTH_EXAMPLE_RENEW=1 a refused code starts a new authorization request (a new link), as Gemini CLI
    and Claude Code do; otherwise the same link stays valid."""
    redirect = issuer + "/code"
    url = ""
    for attempt in range(5):
        if attempt == 0 or os.environ.get("HEARTH_EXAMPLE_RENEW") == "1":
            verifier, challenge = _pkce()
            url = _authorize_url(issuer, redirect, _token(16), challenge)
            print(f"Open this URL in your browser and sign in:\n{url}", flush=True)
        code = input("Paste the authorization code: ").strip()
        status, body = _post(issuer + "/token", _token_form(code, redirect, verifier))
        if status == 200:
            return _save(issuer, body)
        print(f"Invalid code ({body.get('error', status)}). Check the code and try again.", flush=True)
    print("too many invalid codes", file=sys.stderr)
    return 1


def device_code(issuer: str) -> int:
    import time

    status, dev = _post(issuer + "/device/code", {"client_id": CLIENT_ID})
    if status != 200:
        print(f"device authorization failed: {dev.get('error', status)}", file=sys.stderr)
        return 1
    print(f"To sign in, open {dev['verification_uri']} and enter the code {dev['user_code']}", flush=True)
    deadline = time.monotonic() + float(dev.get("expires_in", 300))
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    while time.monotonic() < deadline:
        time.sleep(float(dev.get("interval", 1)))
        status, body = _post(
            issuer + "/token", {"grant_type": grant, "device_code": dev["device_code"], "client_id": CLIENT_ID}
        )
        if status == 200:
            return _save(issuer, body)
        if body.get("error") != "authorization_pending":
            print(f"device sign-in failed: {body.get('error', status)}", file=sys.stderr)
            return 1
    print("the device code expired", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["prompt"]:
        from hearth_example import prompt

        return prompt.main(argv[1:])
    flow = "loopback"
    if argv[1:3][:1] == ["--flow"] and len(argv) == 3:
        flow = argv[2]
    if argv[:1] != ["login"] or flow not in FLOWS or len(argv) not in (1, 3):
        print(USAGE, file=sys.stderr)
        return 2
    issuer = os.environ.get("HEARTH_EXAMPLE_ISSUER", "").rstrip("/")
    if not issuer:
        print("HEARTH_EXAMPLE_ISSUER is not set", file=sys.stderr)
        return 2
    answer = input("Sign in to Example provider. Continue? [Y/n] ").strip().lower()
    if answer not in ("", "y", "yes"):
        print("aborted")
        return 1
    if flow == "paste_code":
        return paste_code(issuer)
    if flow == "device_code":
        return device_code(issuer)
    import json
    import subprocess
    import threading
    import urllib.parse
    import urllib.request
    from http.server import BaseHTTPRequestHandler, HTTPServer

    verifier, challenge = _pkce()
    state = _token(16)
    got: dict[str, str] = {}
    done = threading.Event()

    class Callback(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if q.get("state") == state and q.get("code"):
                got.update(q)
                body = b"<h1>Signed in. You can close this window.</h1>"
                done.set()
            else:
                body = b"<h1>Invalid callback</h1>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer(("127.0.0.1", 0), Callback)
    redirect = f"http://127.0.0.1:{server.server_address[1]}/callback"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = _authorize_url(issuer, redirect, state, challenge)
    print(f"Open this URL to sign in:\n{url}", flush=True)
    if os.environ.get("BROWSER"):
        subprocess.Popen([os.environ["BROWSER"], url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not done.wait(float(os.environ.get("HEARTH_EXAMPLE_TIMEOUT", "300"))):
        print("timed out waiting for the sign-in", file=sys.stderr)
        return 1
    server.shutdown()
    data = urllib.parse.urlencode(_token_form(got["code"], redirect, verifier)).encode()
    with urllib.request.urlopen(urllib.request.Request(issuer + "/token", data=data), timeout=15) as resp:
        tokens = json.load(resp)
    return _save(issuer, tokens)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
