"""HEARTH_EGRESS_PROXY / HEARTH_EGRESS_PROXY_PORTS / HEARTH_EXTRA_CA_CERTS: parsed, checked (each problem names the
fix), and rendered — with the credentials for a sandbox's sealed config only, without them everywhere else."""

from __future__ import annotations

import base64
import itertools
import re
import ssl
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from hearth.config.settings import Settings

PORT_MARK = "{port}"
EXAMPLE = "http://USER:PASS@proxy.example.com:{port}"
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
MAX_BUNDLE = 32 * 1024  # the CAs a proxy needs, not a whole system store: it travels in the sandbox's config pipe
READ_MAX = 4 * 1024 * 1024


class ProxySettingError(ValueError):
    """A proxy setting is unusable; the message names the variable and the fix (never the password)."""


@dataclass(frozen=True)
class ProxyTemplate:
    """HEARTH_EGRESS_PROXY: http://USER:PASS@HOST:{port} (the port is each user's own)."""

    host: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    def url(self, port: int) -> str:
        """The upstream URL with its credentials: for a sandbox's sealed agent config only, never a log."""
        cred = f"{self.username}:{self.password}@" if self.username or self.password else ""
        return f"http://{cred}{self.host}:{port}"

    def shown(self, port: int | None = None) -> str:
        where = f"{self.host}:{port if port is not None else PORT_MARK}"
        return f"http://***@{where}" if self.username or self.password else f"http://{where}"

    def authorization(self) -> str:
        """The Proxy-Authorization header's value (Basic), empty without credentials."""
        if not (self.username or self.password):
            return ""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def parse_proxy(value: str) -> ProxyTemplate:
    """Raise ProxySettingError naming the fix (never echoing the URL: it holds a password)."""
    var = "HEARTH_EGRESS_PROXY"
    if PORT_MARK not in value:
        raise ProxySettingError(
            f"{var} must carry {PORT_MARK} where each user's port goes (e.g. {EXAMPLE}); "
            "the port comes from HEARTH_EGRESS_PROXY_PORTS"
        )
    probe = value.replace(PORT_MARK, "1")
    try:
        parts = urlsplit(probe)
        port = parts.port
    except ValueError:
        raise ProxySettingError(f"{var} is not a URL; give e.g. {EXAMPLE}") from None
    if parts.scheme != "http":
        raise ProxySettingError(f"{var} must be an http:// proxy URL (HTTP CONNECT), e.g. {EXAMPLE}")
    if not parts.hostname or port != 1 or not parts.netloc.endswith(":1"):
        raise ProxySettingError(
            f"{var} must be http://[USER:PASS@]HOST:{PORT_MARK} ({PORT_MARK} as the port), e.g. {EXAMPLE}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxySettingError(f"{var} must have no path or query: http://[USER:PASS@]HOST:{PORT_MARK}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return ProxyTemplate(host, unquote(parts.username or ""), unquote(parts.password or ""))


def parse_ports(value: str) -> tuple[range, ...]:
    """HEARTH_EGRESS_PROXY_PORTS: LO-HI[,LO-HI…] (or single ports), non-empty, disjoint, within 1-65535."""
    var = "HEARTH_EGRESS_PROXY_PORTS"
    out: list[range] = []
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ProxySettingError(f"{var} is empty; give the proxy's port range, e.g. 10001-19999")
    for part in parts:
        m = re.fullmatch(r"(\d{1,5})(?:\s*-\s*(\d{1,5}))?", part)
        if m is None:
            raise ProxySettingError(f"{var}={value!r}: {part!r} is not LO-HI; give e.g. 10001-19999")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise ProxySettingError(f"{var}={value!r}: ports must be 1-65535, e.g. 10001-19999")
        if hi < lo:
            raise ProxySettingError(f"{var}={value!r}: the range {part} is empty (LO after HI); write {hi}-{lo}")
        out.append(range(lo, hi + 1))
    ordered = sorted(out, key=lambda r: r.start)
    for a, b in itertools.pairwise(ordered):
        if b.start < a.stop:
            raise ProxySettingError(
                f"{var}={value!r}: the ranges {a.start}-{a.stop - 1} and {b.start}-{b.stop - 1} overlap; "
                "give each port once"
            )
    return tuple(ordered)


def port_count(ranges: tuple[range, ...]) -> int:
    return sum(len(r) for r in ranges)


def port_at(ranges: tuple[range, ...], index: int) -> int:
    """The `index`-th port of the ranges (0-based)."""
    for r in ranges:
        if index < len(r):
            return r[index]
        index -= len(r)
    raise IndexError(index)


def read_bundle(path: Path) -> str:
    """HEARTH_EXTRA_CA_CERTS: the PEM text of one or more CA certificates, each parsed by OpenSSL. Raises
    ProxySettingError naming the fix."""
    var = "HEARTH_EXTRA_CA_CERTS"
    try:
        if path.exists() and not path.is_file():
            raise IsADirectoryError(21, "not a regular file")
        with path.open("rb") as f:
            data = f.read(READ_MAX + 1)
    except OSError as exc:
        raise ProxySettingError(
            f"{var}={str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}); "
            "give a readable PEM file of CA certificates (make it readable by hearth)"
        ) from None
    if len(data) > READ_MAX:
        raise ProxySettingError(f"{var}={str(path)!r} is larger than 4 MiB; give only the CA certificates to trust")
    blocks = _PEM.findall(data)
    if not blocks:
        raise ProxySettingError(
            f"{var}={str(path)!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA bundle in PEM"
        )
    text = b"\n".join(blocks).decode("ascii") + "\n"
    if len(text) > MAX_BUNDLE:
        raise ProxySettingError(
            f"{var}={str(path)!r} holds more than 32 KiB of certificates; give only the CAs to trust beyond the "
            "system's (sandboxes keep the system CAs)"
        )
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise ProxySettingError(
            f"{var}={str(path)!r} holds a certificate OpenSSL cannot read ({exc}); re-export it as PEM"
        ) from None
    return text


@dataclass(frozen=True)
class Egress:
    """The proxy and trust settings, parsed once (from Settings)."""

    proxy: ProxyTemplate | None
    ports: tuple[range, ...]
    extra_ca: str  # PEM text ("" : none)


def problems(proxy: str, ports: str, extra_ca_certs: Path | None) -> list[str]:
    """`hearth config check`'s refusals for these three settings, each naming the fix."""
    out: list[str] = []
    if proxy:
        try:
            parse_proxy(proxy)
        except ProxySettingError as exc:
            out.append(str(exc))
        try:
            parse_ports(ports)
        except ProxySettingError as exc:
            out.append(str(exc))
    elif ports:
        out.append("HEARTH_EGRESS_PROXY_PORTS is set without HEARTH_EGRESS_PROXY; set the proxy URL too, or unset it")
    if extra_ca_certs is not None:
        try:
            read_bundle(extra_ca_certs)
        except ProxySettingError as exc:
            out.append(str(exc))
    return out


def egress_of(proxy: str, ports: str, extra_ca_certs: Path | None) -> Egress:
    """Parsed settings (already checked by `problems` at load)."""
    template = parse_proxy(proxy) if proxy else None
    return Egress(
        template,
        parse_ports(ports) if template is not None else (),
        read_bundle(extra_ca_certs) if extra_ca_certs is not None else "",
    )


def reach_problems(s: Settings) -> list[str]:
    """Whether sandboxes can reach the proxy at all: through the fabric's uplink (HEARTH_EGRESS on; an address in a
    range sandboxes never reach needs HEARTH_EGRESS_ALLOW), or on BRIDGE_IP through HEARTH_FABRIC_OPEN_PORTS."""
    if not s.egress_proxy:
        return []
    try:
        template, ranges = parse_proxy(s.egress_proxy), parse_ports(s.egress_proxy_ports)
    except ProxySettingError:
        return []  # `problems` names it
    host = template.host.strip("[]")
    if host == str(s.bridge_ip):
        closed = [p for r in ranges for p in r if p not in s.fabric_open_ports]
        if closed:
            return [
                f"HEARTH_EGRESS_PROXY is on BRIDGE_IP {host}: sandboxes reach it only on HEARTH_FABRIC_OPEN_PORTS, "
                f"which lacks e.g. {closed[0]}; list every port of HEARTH_EGRESS_PROXY_PORTS there"
            ]
        return []
    out = []
    if s.egress is False:
        out.append(
            "HEARTH_EGRESS_PROXY is set but sandboxes have no way out to it (HEARTH_EGRESS=false): set "
            "HEARTH_EGRESS=signin (sign-in and CLI sandboxes) or true"
        )
    try:
        ip = IPv4Address(host)
    except ValueError:
        return out  # a name: resolved by each sandbox's agent
    from hearth.config.ranges import BLOCKED

    if any(ip in n for n in BLOCKED) and not any(ip in n for n in s.egress_allow):
        out.append(
            f"HEARTH_EGRESS_PROXY's host {ip} is in a range sandboxes never reach (private, loopback, link-local…): "
            f"add {ip}/32 to HEARTH_EGRESS_ALLOW"
        )
    return out
