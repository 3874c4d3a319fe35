"""Example provider CLI: behaves like the real ones.

    HEARTH_EXAMPLE_ISSUER=http://192.168.100.1:9400 python3 -m hearth_example.cli login

Asks to continue (a PTY prompt the agent answers), prints the sign-in URL, opens it with $BROWSER when set, waits
for the redirect on a localhost callback, exchanges the code with PKCE, writes ~/.example/credentials.json (0600).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

CLIENT_ID = "hearth-example-cli"


def main(argv: list[str]) -> int:
    if argv[:1] != ["login"]:
        print("usage: python3 -m hearth_example.cli login", file=sys.stderr)
        return 2
    issuer = os.environ.get("HEARTH_EXAMPLE_ISSUER", "").rstrip("/")
    if not issuer:
        print("HEARTH_EXAMPLE_ISSUER is not set", file=sys.stderr)
        return 2
    answer = input("Sign in to Example provider. Continue? [Y/n] ").strip().lower()
    if answer not in ("", "y", "yes"):
        print("aborted")
        return 1
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
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
    url = (
        issuer
        + "/authorize?"
        + urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": CLIENT_ID,
                "redirect_uri": redirect,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
    )
    print(f"Open this URL to sign in:\n{url}", flush=True)
    if os.environ.get("BROWSER"):
        subprocess.Popen([os.environ["BROWSER"], url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not done.wait(float(os.environ.get("HEARTH_EXAMPLE_TIMEOUT", "300"))):
        print("timed out waiting for the sign-in", file=sys.stderr)
        return 1
    server.shutdown()
    data = urllib.parse.urlencode(
        {
            "grant_type": "authorization_code",
            "code": got["code"],
            "redirect_uri": redirect,
            "client_id": CLIENT_ID,
            "code_verifier": verifier,
        }
    ).encode()
    with urllib.request.urlopen(urllib.request.Request(issuer + "/token", data=data), timeout=15) as resp:
        tokens = json.load(resp)
    path = Path.home() / ".example" / "credentials.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"issuer": issuer, **tokens}, f)
    os.replace(tmp, path)
    print("Signed in.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
