"""The internet stand-in by itself (hearth/standins/internet.py): from the host's side of it (the namespace a
fabric's uplink leads into), names resolve through its DNS and its pages verify against its CA only; the authorize
page's button redirects to the CLI's redirect_uri with the state; the device page approves only the code the CLI
was given; everything it made is gone afterwards. The sign-ins through a real controller: tests/providers/
test_e2e.py."""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import urllib.parse
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hearth.fabric.dial import socket_in_netns
from hearth.standins.inetdns import resolve
from hearth.standins.internet import DNS_IP, EXAMPLE_HOST, HOST_IP, PROXY_IP, PROXY_USER, internet
from hearth.standins.internet import fetch as https_get
from hearth.standins.standin import DEVICE_USER_CODE

pytestmark = [pytest.mark.netns]


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _connect(netns: str, password: str, port: int) -> bytes:
    """CONNECT claude.ai:443 through the stand-in's proxy on `port`; the status line's start."""
    auth = base64.b64encode(f"{PROXY_USER}:{password}".encode()).decode()
    sock = socket_in_netns(netns)
    sock.settimeout(10)
    try:
        sock.connect((PROXY_IP, port))
        sock.sendall(
            f"CONNECT claude.ai:443 HTTP/1.1\r\nHost: claude.ai:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        return sock.recv(12)
    finally:
        sock.close()


def test_dns_tls_pages_and_cleanup() -> None:
    before = _netns()
    with internet("h3t-") as inet:
        host = inet.uplink_netns
        udp = socket_in_netns(host, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            assert resolve(udp, DNS_IP, "claude.ai") == IPv4Address("203.0.113.10")
            assert resolve(udp, DNS_IP, "AUTH.openai.com") == IPv4Address("203.0.113.11")
            assert resolve(udp, DNS_IP, EXAMPLE_HOST) == IPv4Address("203.0.113.13")
            assert resolve(udp, DNS_IP, "not-a-provider.example.org") is None  # NXDOMAIN
        finally:
            udp.close()
        assert [q.answered for q in inet.dns.log.queries] == [True, True, True, False]

        # The authorize page: one button; its form leads (via the stand-in) to the CLI's callback with the state.
        redirect = "http://localhost:54545/callback"
        query = urllib.parse.urlencode({"response_type": "code", "redirect_uri": redirect, "state": "st-1"})
        status, _, page = https_get(host, f"https://claude.ai/oauth/authorize?{query}", inet.ca_file)
        assert status == 200 and b"id=authorize" in page and b">Authorize</button>" in page
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.decode()))
        assert fields == {"redirect_uri": redirect, "state": "st-1"}
        approve = "https://claude.ai/__standin/approve?" + urllib.parse.urlencode(fields)
        status, headers, _ = https_get(host, approve, inet.ca_file)
        assert status == 302 and headers["location"] == f"{redirect}?code=test-code&state=st-1"
        assert inet.traffic.lines()[-1] == "GET claude.ai/__standin/approve"

        # The code pages the paste flows land on.
        url = "https://platform.claude.com/oauth/code/callback?code=c1&state=s1"
        status, _, page = https_get(host, url, inet.ca_file)
        assert status == 200 and b"<code id=code>c1#s1</code>" in page
        status, _, page = https_get(host, "https://codeassist.google.com/authcode?code=c2", inet.ca_file)
        assert status == 200 and b"<code id=code>c2</code>" in page

        # Codex's device page and the approval the CLI polls for.
        status, _, page = https_get(host, "https://auth.openai.com/codex/device", inet.ca_file)
        assert status == 200 and b"id=user_code" in page
        device = "https://auth.openai.com/__standin/device"
        assert https_get(host, device, inet.ca_file, {"user_code": "WRONG-CODE1"})[0] == 400
        assert not inet.net.approved.is_set()
        assert https_get(host, device, inet.ca_file, {"user_code": DEVICE_USER_CODE.lower()})[0] == 200
        assert inet.net.approved.is_set()

        # Another CA's client refuses the stand-in's certificate (it is the throwaway CA that makes it trusted).
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(host, "https://claude.ai/", Path("/etc/ssl/certs/ca-certificates.crt"))
        # Every request came from the host's side address (no masquerade needed between the two).
        assert {s.peer for s in inet.traffic.seen} == {HOST_IP}

        # The upstream proxy: CONNECT through a user's port with the stand-in's credentials; without them, 407.
        assert _connect(host, inet.proxy_password, 10003) == b"HTTP/1.1 200"
        assert _connect(host, "wrong", 10004) == b"HTTP/1.1 407"
        ports = {(s.port, s.user, s.target, s.status) for s in inet.proxy.seen}
        assert ports == {
            (10003, PROXY_USER, "claude.ai:443", 200),
            (10004, "", "claude.ai:443", 407),
        }  # refused: no user
        assert "{port}" in inet.proxy_env()["HEARTH_EGRESS_PROXY"]
        made = {inet.uplink_netns, inet.netns, inet.person_netns}
        assert made <= _netns()
        tmp = inet.dir
    assert not (made & _netns()) and not (made & before)
    assert not tmp.exists()
