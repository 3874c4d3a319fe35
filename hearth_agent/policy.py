"""Chromium's managed policies on a hearth desktop — one definition, written (root-owned, read-only to the desktop
user) by the netns driver into the directory it binds at /etc/chromium, and by the VM's PID 1 into /etc/chromium.

The person at the desktop controls the browser, so the browser must not become a way into the sandbox's own files
or tools: no file:// URLs (the agent's and the CLI's files), no DevTools, no downloads.

With an egress proxy (HEARTH_EGRESS_PROXY) the browser goes through the agent's local proxy on 127.0.0.1
(hearth_agent/egressproxy.py: it holds the credentials, the policy never does; loopback — the CLI's callback — is
never proxied). Extra CA certificates (HEARTH_EXTRA_CA_CERTS) are trusted through the `CACertificates` policy
(base64 DER, Chromium ≥ 131 on Linux).
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
from typing import Any

POLICY = {
    "URLBlocklist": ["file://*"],
    "DeveloperToolsAvailability": 2,  # DevTools disallowed
    "DownloadRestrictions": 3,  # block all downloads
}
MANAGED = "policies/managed"
NAME = "hearth.json"
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def ca_der_b64(pem: str) -> list[str]:
    """Each certificate of a PEM bundle as base64 DER (the `CACertificates` policy's form)."""
    return [base64.b64encode(ssl.PEM_cert_to_DER_cert(block)).decode() for block in _PEM.findall(pem)]


def policy(proxy_port: int | None = None, extra_ca: str = "") -> dict[str, Any]:
    out: dict[str, Any] = dict(POLICY)
    if proxy_port:
        out["ProxySettings"] = {"ProxyMode": "fixed_servers", "ProxyServer": f"http://127.0.0.1:{proxy_port}"}
    if extra_ca:
        out["CACertificates"] = ca_der_b64(extra_ca)
    return out


def write_policy(etc_chromium: str, proxy_port: int | None = None, extra_ca: str = "") -> str:
    """Write the policy under `etc_chromium`/policies/managed/ (directories 0755, file 0644); returns its path."""
    managed = os.path.join(etc_chromium, MANAGED)
    os.makedirs(managed, mode=0o755, exist_ok=True)
    path = os.path.join(managed, NAME)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(policy(proxy_port, extra_ca), f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
