"""An internet stand-in, reached through the real path: network namespaces that play "the host's side", "the
internet" and "the person's own machine" for a hearth fabric, so a sign-in goes the way it goes on a host with internet access — Chromium in
a sandbox resolves the provider's name through the fabric's DNS forwarder, reaches it over the fabric's egress
(uplink, masquerade), verifies its certificate against HEARTH_EXTRA_CA_CERTS, and redirects into the CLI.

    fabric ns ──uplink veth──▶ <name>-up  (HEARTH_UPLINK_NETNS: the host's side, masquerades out of `inet-host0`)
                                   │ 192.0.2.1/24 (inet-host0) ─ veth ─ 192.0.2.254/24 (inet-host1)
                               <name>-net (the internet: addresses on its loopback, routed from <name>-up)
                                   │ 198.18.0.254/24 ─ veth ─ 198.18.0.1/24: <name>-you (the person's own machine)
                                   203.0.113.10  Anthropic's names     203.0.113.11  OpenAI's
                                   203.0.113.12  Google's              203.0.113.13  the example provider's
                                   203.0.113.20  www.example.org (no provider's)
                                   198.51.100.53 DNS (authoritative for all of them; NXDOMAIN for the rest)
                                   198.51.100.80 an upstream proxy (ports 10001-10008, Basic auth)

HTTPS on :443 of each address with one leaf certificate for every name, signed by a throwaway CA
(`ca_file`, for HEARTH_EXTRA_CA_CERTS); pages and endpoints: hearth/standins/inetweb.py; DNS: inetdns.py. The
"person's own browser" of a direct sign-in runs in <name>-you (`person_browser_argv`: resolv.conf → the stand-in's
DNS): no address is ever added to the host's root namespace. Everything is named `<prefix><hex>…` and removed on
exit (a context manager). Needs root.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from socketserver import BaseServer
from typing import Any

from hearth.fabric.dial import NETNS_RUN_DIR, _run_in_netns, socket_in_netns
from hearth.standins.inetdns import DnsServer
from hearth.standins.inetweb import ExampleServer, ProviderServer, Traffic
from hearth.standins.proxyserver import ProxyServer, ProxyThread, port_list
from hearth.standins.standin import HOSTS, SYSTEM_BUNDLE, Net, Responder, _certs, default_responder
from hearth_example.idp import IdpState

HOST_IP, GATEWAY_IP = "192.0.2.1", "192.0.2.254"  # the host's public-looking side and its next hop
PERSON_IP, PERSON_GATEWAY = "198.18.0.1", "198.18.0.254"  # the person's own machine, elsewhere on the internet
DNS_IP = "198.51.100.53"
PROXY_IP, PROXY_PORTS, PROXY_USER = "198.51.100.80", "10001-10008", "hearth-e2e"  # an upstream proxy, per-user ports
EXAMPLE_HOST = "idp.example.com"
GROUPS: dict[str, tuple[str, ...]] = {
    "203.0.113.10": tuple(h for h in HOSTS if "claude" in h or "anthropic" in h),
    "203.0.113.11": tuple(h for h in HOSTS if "openai" in h or "chatgpt" in h),
    "203.0.113.12": (
        *(h for h in HOSTS if "google" in h),
        "codeassist.google.com",
        "developers.google.com",
    ),
    "203.0.113.13": (EXAMPLE_HOST,),
    "203.0.113.20": ("www.example.org",),  # a site of no provider (refused under HEARTH_EGRESS_POLICY=provider)
}
EXAMPLE_IP = "203.0.113.13"
CMD_TIMEOUT = 15.0
CHROMIUM = "/usr/bin/chromium"


def zone() -> dict[str, IPv4Address]:
    return {name: IPv4Address(ip) for ip, names in GROUPS.items() for name in names}


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _sysctl(netns: str, key: str, value: str) -> None:
    _ip("netns", "exec", netns, "sysctl", "-qw", f"{key}={value}")


@dataclass
class Internet:
    """A running stand-in (see the module docstring)."""

    uplink_netns: str  # HEARTH_UPLINK_NETNS
    netns: str  # the internet itself
    person_netns: str  # the person's own machine (their browser, for direct sign-ins)
    dir: Path
    ca_file: Path  # HEARTH_EXTRA_CA_CERTS
    dns: DnsServer
    net: Net  # the responder's state (device approvals)
    idp: IdpState  # the example provider's IdP
    traffic: Traffic
    proxy: ProxyServer  # the upstream proxy (HEARTH_EGRESS_PROXY): which port and user every request came in on
    proxy_password: str = field(repr=False, default="")
    servers: list[BaseServer] = field(default_factory=list)

    def proxy_env(self) -> dict[str, str]:
        """HEARTH_EGRESS_PROXY / _PORTS for a hearth whose users go out through this stand-in's proxy."""
        return {
            "HEARTH_EGRESS_PROXY": f"http://{PROXY_USER}:{self.proxy_password}@{PROXY_IP}:{{port}}",
            "HEARTH_EGRESS_PROXY_PORTS": PROXY_PORTS,
        }

    @property
    def example_issuer(self) -> str:
        return f"https://{EXAMPLE_HOST}"

    def settings_env(self) -> dict[str, str]:
        """What a hearth attached to this stand-in is configured with (the fabric's uplink into it, its DNS as the
        upstream resolver, its CA trusted, the example provider at its name)."""
        from hearth.config import Settings

        env = {
            "HEARTH_UPLINK_NETNS": self.uplink_netns,
            "HEARTH_DNS_UPSTREAM": DNS_IP,
            "HEARTH_EXTRA_CA_CERTS": str(self.ca_file),
            "HEARTH_EXAMPLE_ISSUER": self.example_issuer,
        }
        fields = {"HEARTH_DNS_UPSTREAM": "dns_upstream", "HEARTH_EXTRA_CA_CERTS": "extra_ca_certs"}
        return {k: v for k, v in env.items() if fields.get(k, "") in ("", *Settings.model_fields)}

    def person_browser_argv(self) -> list[str]:
        """The person's own browser (Debian's Chromium) on the person's machine (a namespace of its own on the
        stand-in's internet, PERSON_IP), resolving through the stand-in's DNS (its resolv.conf bound over
        /etc/resolv.conf in a mount namespace of its own). A shell script path, for Playwright's `executable_path`."""
        return [str(self.dir / "person-chromium")]

    def spki_pin(self) -> str:
        """The leaf's SPKI hash, for the person's browser (`--ignore-certificate-errors-spki-list`): that browser
        trusts this stand-in's key only, not any certificate."""
        return (self.dir / "leaf.spki").read_text().strip()


def _person_browser(d: Path, person_netns: str) -> None:
    resolv = d / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_IP}\n")
    inner = f'mount --bind {shlex.quote(str(resolv))} /etc/resolv.conf && exec {CHROMIUM} "$@"'
    script = d / "person-chromium"
    script.write_text(
        "#!/bin/sh\n"
        f"exec nsenter --net=/run/netns/{shlex.quote(person_netns)} -- unshare --mount --propagation private -- "
        f'sh -c {shlex.quote(inner)} chromium "$@"\n'
    )
    script.chmod(0o755)
    resolv.chmod(0o644)


def _spki(cert_pem: bytes) -> str:
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    leaf = x509.load_pem_x509_certificate(cert_pem)
    der = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class _NetnsProxy(ProxyThread):
    """The proxy's event loop on a thread that joined the internet namespace first (its listening sockets and its
    connections onward are made there)."""

    def __init__(self, server: ProxyServer, netns: str) -> None:
        super().__init__(server)
        self.failed: dict[str, Any] = {}
        where = NETNS_RUN_DIR / netns
        self._thread = threading.Thread(
            target=_run_in_netns, args=(where, self.loop.run_forever, self.failed), name="inet-proxy", daemon=True
        )


def _serve(server: BaseServer, stack: contextlib.ExitStack) -> None:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    stack.callback(stop)


def _listen(netns: str, ip: str, ctx: ssl.SSLContext) -> socket.socket:
    sock = socket_in_netns(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, 443))
    sock.listen(64)
    return ctx.wrap_socket(sock, server_side=True)


def _adopt(server: Any, sock: socket.socket) -> None:
    server.socket = sock
    server.server_address = sock.getsockname()[:2]


def _attach(ns: str, inet: str, name: str, ip: str, gateway: str) -> None:
    """A veth from `ns` (address `ip`/24, default route) to the internet namespace (`gateway`/24)."""
    _ip("-n", ns, "link", "add", f"{name}0", "type", "veth", "peer", "name", f"{name}1", "netns", inet)
    _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", f"{name}0")
    _ip("-n", inet, "addr", "add", f"{gateway}/24", "dev", f"{name}1")
    _ip("-n", ns, "link", "set", f"{name}0", "up")
    _ip("-n", inet, "link", "set", f"{name}1", "up")
    _ip("-n", ns, "route", "add", "default", "via", gateway)


def _links(up: str, inet: str, person: str) -> None:
    for ns in (up, inet, person):
        _ip("-n", ns, "link", "set", "lo", "up")
    _attach(up, inet, "inet-host", HOST_IP, GATEWAY_IP)
    _attach(person, inet, "inet-you", PERSON_IP, PERSON_GATEWAY)
    for ip in (*GROUPS, DNS_IP, PROXY_IP):
        _ip("-n", inet, "addr", "add", f"{ip}/32", "dev", "lo")
    _sysctl(up, "net.ipv4.ip_forward", "1")


@contextlib.contextmanager
def internet(prefix: str = "hearth-inet-", responder: Responder = default_responder) -> Iterator[Internet]:
    """Bring up the stand-in; everything it made is removed on exit, in reverse."""
    tag = secrets.token_hex(3)
    up, inet, person = f"{prefix}{tag}-up", f"{prefix}{tag}-net", f"{prefix}{tag}-you"
    with contextlib.ExitStack() as stack:
        d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{prefix}{tag}-")))
        d.chmod(0o755)
        for ns in (up, inet, person):
            _ip("netns", "add", ns)
            stack.callback(subprocess.run, ["ip", "netns", "delete", ns], check=False, timeout=CMD_TIMEOUT)
        _links(up, inet, person)
        names = tuple(n for ns in GROUPS.values() for n in ns)
        ca, cert, key = _certs(names)
        (d / "ca.pem").write_bytes(ca)
        (d / "bundle.pem").write_bytes((SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b"") + ca)
        (d / "leaf.pem").write_bytes(cert + ca)
        (d / "leaf.key").write_bytes(key)
        (d / "leaf.spki").write_text(_spki(cert))
        for f in ("ca.pem", "bundle.pem", "leaf.spki"):
            (d / f).chmod(0o644)
        (d / "leaf.key").chmod(0o600)
        _person_browser(d, person)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "leaf.pem", d / "leaf.key")
        dns = DnsServer(lambda kind: socket_in_netns(inet, socket.AF_INET, kind), DNS_IP, zone())
        stack.callback(dns.close)
        net = Net(env={}, hosts_file="")
        traffic, state = Traffic(), IdpState(auto_approve=False)
        servers: list[BaseServer] = []
        for ip in GROUPS:
            sock = _listen(inet, ip, ctx)
            server: BaseServer
            if ip == EXAMPLE_IP:
                server = ExampleServer((ip, 443), state, traffic)
            else:
                server = ProviderServer((ip, 443), net, traffic, responder)
            _adopt(server, sock)
            _serve(server, stack)
            servers.append(server)
        password = secrets.token_urlsafe(12)
        users = {PROXY_USER: password}
        resolve = {name: str(ip) for name, ip in zone().items()}
        proxy = ProxyServer(PROXY_IP, port_list(PROXY_PORTS), users, resolve)
        thread = stack.enter_context(_NetnsProxy(proxy, inet))
        del thread
        yield Internet(up, inet, person, d, d / "ca.pem", dns, net, state, traffic, proxy, password, servers)


def fetch(
    netns: str,
    url: str,
    ca_file: Path,
    form: dict[str, str] | None = None,
    resolver: str = DNS_IP,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """GET (or POST `form` to) an https:// URL from inside `netns` the way a client there would: the name resolved
    by `resolver` (from inside the namespace), the certificate verified against `ca_file`; no redirect followed.
    For tests and the e2e check. Returns status, headers (lower-case names), body."""
    import http.client
    import urllib.parse

    from hearth.standins.inetdns import resolve

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    udp = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        addr = resolve(udp, resolver, host, timeout)
    finally:
        udp.close()
    if addr is None:
        raise OSError(f"{host}: NXDOMAIN from {resolver}")
    ctx = ssl.create_default_context(cafile=str(ca_file))
    sock = socket_in_netns(netns)
    sock.settimeout(timeout)
    sock.connect((str(addr), parts.port or 443))
    conn = http.client.HTTPSConnection(host, parts.port or 443, timeout=timeout, context=ctx)
    conn.sock = ctx.wrap_socket(sock, server_hostname=host)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if form is None:
            conn.request("GET", target)
        else:
            body = urllib.parse.urlencode(form)
            conn.request("POST", target, body, {"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
