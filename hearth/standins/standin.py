"""Local stand-ins for the providers' network, for the conformance runs (offline, inside a namespace of our own).

One HTTPS server on 127.0.0.1:443 inside the namespace answers for every provider host (a leaf certificate for all
of them, signed by a throwaway test CA). The CLI trusts that CA through NODE_EXTRA_CA_CERTS (Node, Bun) and
SSL_CERT_FILE (OpenSSL/rustls users: the system bundle plus the test CA), and reaches the server through a hosts
file bound over /etc/hosts in the CLI's own mount namespace (`wrap`). Every request is recorded; answers come from
a per-provider responder (the token endpoints the CLIs' bundles name).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hearth.fabric.dial import socket_in_netns

HOSTS = (
    "platform.claude.com",
    "claude.ai",
    "claude.com",
    "console.anthropic.com",
    "api.anthropic.com",
    "statsig.anthropic.com",
    "auth.openai.com",
    "api.openai.com",
    "chatgpt.com",
    "ab.chatgpt.com",
    "oauth2.googleapis.com",
    "www.googleapis.com",
    "cloudcode-pa.googleapis.com",
    "play.googleapis.com",
    "accounts.google.com",
)
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

CURRENT = threading.local()  # `.headers`: the request being answered, for responders that check a bearer token

Responder = Callable[["Net", str, str, str, bytes], tuple[int, Any]]  # Any: JSON, SSE bytes or an Iterator of chunks


@dataclass
class Request:
    method: str
    host: str
    path: str
    body: bytes


@dataclass
class Net:
    env: dict[str, str]
    hosts_file: str
    requests: list[Request] = field(default_factory=list)
    approved: threading.Event = field(default_factory=threading.Event)  # the person approved the device code

    def paths(self) -> list[str]:
        return [f"{r.method} {r.host}{r.path.split('?')[0]}" for r in self.requests]


def wrap(command: list[str], hosts_file: str) -> list[str]:
    """Run `command` in a mount namespace of its own where `hosts_file` is /etc/hosts."""
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, hosts_file, *command]


def _certs(hosts: tuple[str, ...]) -> tuple[bytes, bytes, bytes]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hearth conformance test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


def fake_jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT (header.claims.signature) for CLIs that read claims from an id_token."""

    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT', 'kid': 'test'})}.{part(claims)}.{part('sig')}"


DEVICE_USER_CODE = "TEST-CODE9"
REFUSED_CODE = "wrong-code"


def default_responder(net: Net, method: str, host: str, path: str, body: bytes) -> tuple[int, Any]:
    """Token endpoints of the three CLIs answered with test tokens; everything else 404 (recorded)."""
    now = int(time.time())
    p = path.split("?")[0]
    if REFUSED_CODE.encode() in body:  # a wrong code the person pasted
        return 400, {"error": "invalid_grant", "error_description": "Invalid authorization code"}
    if host == "auth.openai.com" and p == "/api/accounts/deviceauth/usercode":
        return 200, {"device_auth_id": "dev-test", "user_code": DEVICE_USER_CODE, "interval": "1"}
    if host == "auth.openai.com" and p == "/api/accounts/deviceauth/token":
        if not net.approved.is_set():
            return 403, {"error": "authorization_pending"}
        return 200, {
            "authorization_code": "test-code",
            "code_challenge": "x" * 43,
            "code_verifier": "v" * 43,
        }
    if host == "platform.claude.com" and p == "/v1/oauth/token":
        return 200, {
            "access_token": "sk-ant-oat01-test",
            "refresh_token": "sk-ant-ort01-test",
            "expires_in": 3600,
            "token_type": "Bearer",
            "scope": "user:inference user:profile",
            "account": {"uuid": "00000000-0000-4000-8000-000000000001", "email_address": "t@example.test"},
            "organization": {"uuid": "00000000-0000-4000-8000-000000000002", "name": "Test"},
        }
    if host == "auth.openai.com" and p == "/oauth/token":
        claims = {
            "email": "t@example.test",
            "iat": now,
            "exp": now + 3600,
            "https://api.openai.com/auth": {"chatgpt_account_id": "acct-test", "chatgpt_plan_type": "plus"},
        }
        return 200, {
            "id_token": fake_jwt(claims),
            "access_token": fake_jwt({**claims, "scp": ["openid"]}),
            "refresh_token": "rt-test",
        }
    if host == "oauth2.googleapis.com" and p == "/token":
        return 200, {
            "access_token": "ya29.test",
            "refresh_token": "1//test",
            "expires_in": 3599,
            "token_type": "Bearer",
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "id_token": fake_jwt({"email": "t@example.test", "sub": "1", "iat": now, "exp": now + 3600}),
        }
    gemini = _gemini_api(host, p, now)
    if gemini is not None:
        return gemini
    return 404, {"error": "not_found", "standin": True}


GEMINI_ANSWER = "hearth-standin-ready"  # what the stand-in's model says to any prompt


def _gemini_api(host: str, p: str, now: int) -> tuple[int, Any] | None:
    """What a Gemini CLI signed in with Google needs to answer one prompt: its cached token checked (tokeninfo,
    userinfo), its Code Assist tier loaded, and a streamed answer (SSE bytes)."""
    if host == "oauth2.googleapis.com" and p == "/tokeninfo":
        scope = "https://www.googleapis.com/auth/cloud-platform"
        return 200, {"aud": "standin", "sub": "1", "scope": scope, "exp": str(now + 3600), "expires_in": "3599"}
    if host == "www.googleapis.com" and p == "/oauth2/v2/userinfo":
        return 200, {"id": "1", "email": "t@example.test", "verified_email": True}
    if host != "cloudcode-pa.googleapis.com":
        return None
    method = p.rsplit(":", 1)[-1]
    if method == "loadCodeAssist":
        tier = {
            "id": "free-tier",
            "name": "Gemini Code Assist for individuals",
            "userDefinedCloudaicompanionProject": False,
        }
        return 200, {"currentTier": tier, "allowedTiers": [tier], "cloudaicompanionProject": "hearth-standin"}
    if method == "onboardUser":
        return 200, {"done": True, "response": {"cloudaicompanionProject": {"id": "hearth-standin"}}}
    if method == "streamGenerateContent":
        answer = {
            "response": {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": GEMINI_ANSWER}]}, "finishReason": "STOP"}
                ],
                "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
            },
            "traceId": "standin",
        }
        return 200, b"data: " + json.dumps(answer).encode() + b"\n\n"
    if method == "generateContent":  # the CLI's side calls (routing, next speaker): a plain JSON answer
        text = json.dumps({"reasoning": "standin", "model_choice": "flash", "next_speaker": "user"})
        candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
        return 200, {"response": {"candidates": [candidate]}, "traceId": "standin"}
    if method == "countTokens":
        return 200, {"totalTokens": 1}
    return 200, {}  # experiments, quotas, settings, recordings: empty is "none"


@contextlib.contextmanager
def provider_net(netns: str, responder: Responder = default_responder) -> Iterator[Net]:
    """The HTTPS stand-in inside `netns`, the CA files and the hosts file; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hearth-standin-") as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        ca, cert, key = _certs(HOSTS)
        (d / "ca.pem").write_bytes(ca)
        (d / "bundle.pem").write_bytes((SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b"") + ca)
        (d / "leaf.pem").write_bytes(cert + ca)
        (d / "leaf.key").write_bytes(key)
        hosts = d / "hosts"
        hosts.write_text("127.0.0.1 localhost\n::1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in HOSTS))
        for f in d.iterdir():
            f.chmod(0o644)
        net = Net(
            env={
                "NODE_EXTRA_CA_CERTS": str(d / "ca.pem"),
                "SSL_CERT_FILE": str(d / "bundle.pem"),
                "NODE_USE_ENV_PROXY": "",
                "HTTPS_PROXY": "",
                "https_proxy": "",
                "HTTP_PROXY": "",
                "http_proxy": "",
            },
            hosts_file=str(hosts),
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "leaf.pem", d / "leaf.key")
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def handle(self) -> None:
                with contextlib.suppress(OSError):  # a CLI that hung up (cancelled, timed out): nothing to answer
                    super().handle()

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                host = (self.headers.get("Host") or "").split(":")[0]
                with lock:
                    net.requests.append(Request(self.command, host, self.path, body))
                CURRENT.headers = self.headers
                code, out = responder(net, self.command, host, self.path, body)
                if code == 101 and callable(out):  # a WebSocket: the responder talks frames on the raw streams
                    self._upgrade(out)
                    return
                if isinstance(out, Iterator):  # a model's answer streamed as it is made (chunked, flushed)
                    self._stream(code, out)
                    return
                stream = isinstance(out, bytes)  # server-sent events, as they go over the wire
                raw = out if stream else json.dumps(out).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/event-stream" if stream else "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _upgrade(self, talk: Callable[[Any, Any], None]) -> None:
                key = (self.headers.get("Sec-WebSocket-Key") or "").strip()
                digest = hashlib.sha1((key + WS_GUID).encode()).digest()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", base64.b64encode(digest).decode())
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError, ValueError):
                    talk(self.rfile, self.wfile)

            def _stream(self, code: int, chunks: Iterator[bytes]) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in chunks:
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client went away mid-stream (a cancelled prompt)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        sock = socket_in_netns(netns)
        sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 443))
        server = ThreadingHTTPServer(("127.0.0.1", 443), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = ctx.wrap_socket(sock, server_side=True)
        server.socket.listen(64)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            yield net
        finally:
            server.shutdown()
            server.server_close()


def get_in_netns(netns: str, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET an http:// URL from inside `netns` (the person's browser following a loopback redirect)."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    sock = socket_in_netns(netns)
    sock.settimeout(timeout)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
