"""Configuration: one frozen object, read from the environment and `.env`, checked as a whole.

Network names stay compatible with the system hearth replaces (`INTERNAL_NETWORK`, `BRIDGE_DEVICE`, `BRIDGE_IP`,
`IP_POOL_START`, `IP_POOL_END`); hearth's own settings carry the `HEARTH_` prefix. A variable that looks like one of
ours but is not read (the seed's `VM_IP_POOL_START`) is an error that names the variable we do read.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hearth.errors import ConfigError

DriverName = Literal["auto", "netns", "qemu", "firecracker", "loopback"]
SigninModeName = Literal["remote_browser", "direct"]
VncServerName = Literal["xvnc", "x11vnc"]
EgressName = bool | Literal["signin"]  # HEARTH_EGRESS: false | true | signin (hearth/egress/policy.py)
EgressPolicyName = Literal["open", "provider"]
BrowserStartName = Literal["queued", "at_boot"]

# Variables read without the HEARTH_ prefix (seed compatibility), plus other unprefixed knobs.
PLAIN_NAMES = (
    "INTERNAL_NETWORK",
    "BRIDGE_DEVICE",
    "BRIDGE_IP",
    "IP_POOL_START",
    "IP_POOL_END",
    "OAUTH_FLOW_TIMEOUT",
    "MAX_BROWSER_SESSIONS",
    "MAX_SESSIONS_PER_USER",
)

# Names the seed system used (or its operators believed it used) that were never read; value = what to use.
LEGACY_NAMES = {
    "VM_IP_POOL_START": "IP_POOL_START",
    "VM_IP_POOL_END": "IP_POOL_END",
    "VM_BRIDGE_DEVICE": "BRIDGE_DEVICE",
    "VM_BRIDGE_IP": "BRIDGE_IP",
    "VM_INTERNAL_NETWORK": "INTERNAL_NETWORK",
    "VM_NETWORK": "INTERNAL_NETWORK",
    "BRIDGE_NAME": "BRIDGE_DEVICE",
    "DEBUG_PRESERVE_VMS": "HEARTH_KEEP_FAILED",
}

# Unprefixed variables that look like network settings: anything matching is checked against the known names.
_NETWORKISH = re.compile(r"^(VM_|FC_|FIRECRACKER_)?(IP_POOL|BRIDGE|INTERNAL_NET|TAP_|GUEST_IP)")
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/hearth")
    return Path.home() / ".local" / "share" / "hearth"


class Settings(BaseSettings):
    """The effective configuration. Frozen: pass it in, never mutate it."""

    model_config = SettingsConfigDict(
        env_prefix="HEARTH_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- seed-compatible network names (no prefix) -------------------------------------------------
    # a /22 per node (1,021 sandboxes); unset, BRIDGE_IP and IP_POOL_START/END follow it (`_derive_addresses`)
    internal_network: IPv4Network = Field(
        IPv4Network("192.168.100.0/22"), validation_alias=AliasChoices("INTERNAL_NETWORK")
    )
    bridge_device: str = Field("br0", validation_alias=AliasChoices("BRIDGE_DEVICE"))
    bridge_ip: IPv4Address = Field(IPv4Address("192.168.100.1"), validation_alias=AliasChoices("BRIDGE_IP"))
    ip_pool_start: IPv4Address = Field(IPv4Address("192.168.100.2"), validation_alias=AliasChoices("IP_POOL_START"))
    ip_pool_end: IPv4Address = Field(IPv4Address("192.168.103.254"), validation_alias=AliasChoices("IP_POOL_END"))
    oauth_flow_timeout: float = Field(600.0, gt=0, validation_alias=AliasChoices("OAUTH_FLOW_TIMEOUT"))
    # the whole store's active sessions (every node); 0: off — each node's capacity is the bound
    max_browser_sessions: int = Field(0, ge=0, validation_alias=AliasChoices("MAX_BROWSER_SESSIONS"))
    max_sessions_per_user: int = Field(2, ge=1, validation_alias=AliasChoices("MAX_SESSIONS_PER_USER"))
    max_sessions_per_node: int = Field(0, ge=0)  # active sessions on this node's fabric; 0: only the IP pool bounds it
    min_free_mb: int = Field(256, ge=0)  # /ready fails below this much free space in the data dir

    # --- hearth's own (HEARTH_ prefix) -----------------------------------------------------------------
    api_listen: str = "127.0.0.1:4000"
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    public_url: str = ""
    # the web application's origins (hearth/gateway/embed.py): may frame the viewer page, get its postMessage events,
    # and be a session's return_url; empty: the page is framed by hearth only and return_url is refused
    embed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str = ""
    fabric_netns: str = "hearth"
    # --- many hosts (hearth/cluster): `hearth serve` is the single node `local` ------------------------------
    node_id: str = "local"  # this host's id in the shared store; sessions, leases and slots carry it
    node_address: str = ""  # http://host:port where edges reach this node's API + gateway (default: HEARTH_API_LISTEN)
    node_heartbeat: float = Field(2.0, gt=0, le=60)  # seconds between a node's heartbeats
    node_dead_after: float = Field(10.0, gt=0)  # a node silent this long is marked down, its sessions ended
    # edge → node (hearth/cluster/credential.py): the key ring edges sign with and nodes verify (kid:secret[,…], the
    # first signs); set, an edge checks the caller's API key itself and never forwards it to a node
    node_credential: str = Field("", repr=False)
    node_tls_cert: Path | None = None  # a node serves its API + gateway over TLS with this certificate (PEM chain)...
    node_tls_key: Path | None = None  # ...and this private key (PEM)
    node_ca: Path | None = None  # an edge verifies nodes' certificates against this CA bundle (PEM); unset: system CAs
    # Prometheus /metrics without authentication on this HOST:PORT of its own (e.g. 127.0.0.1:9400); empty: off. The
    # API port serves /metrics only with an API key.
    metrics_listen: str = ""
    # sandboxes join this cgroup (v2) directory of the host's hierarchy, outside the node container's cgroup, so that
    # removing the container does not kill them (hearth/sandbox/hostscope.py); unset: they share the node's cgroup
    sandbox_cgroup: Path | None = None
    # written to that cgroup's memory.max / cpu.max when it is prepared: the budget of all the node's sandboxes
    # together (bytes, or 512Mi / 8Gi / 8G), and CPU cores (e.g. 6 or 1.5); unset: no limit there
    sandbox_memory_max: int | None = Field(None, ge=64 * 1024 * 1024)
    sandbox_cpu_max: float | None = Field(None, gt=0)
    driver: DriverName = "auto"
    # HEARTH_DRIVER=loopback (hearth/sandbox/loopback.py: the agent as a plain process on 127.x, no isolation at
    # all — for tests) is refused unless this says so explicitly
    allow_unisolated: bool = False
    # who gets a route out through the uplink (hearth/egress): "signin" — sign-in sandboxes (both modes) and CLI
    # sandboxes, a plain desktop without a provider none; true — every sandbox; false — none (no uplink at all)
    egress: EgressName = "signin"
    # destinations egress never reaches (hearth/egress/policy.py BLOCKED: private, CGNAT, link-local, loopback, …)
    # that it may reach after all: comma-separated IPv4 CIDRs; never one covering the fabric or the uplink
    egress_allow: Annotated[tuple[IPv4Network, ...], NoDecode] = ()
    egress_policy: EgressPolicyName = "open"  # provider: a sign-in sandbox resolves only its provider's domains
    # the DNS forwarder on BRIDGE_IP:53 asks these (comma-separated IPv4); empty: the host's /etc/resolv.conf's
    dns_upstream: Annotated[tuple[IPv4Address, ...], NoDecode] = ()
    egress_conn_max: int = Field(256, ge=1)  # concurrent connections out per sandbox
    egress_conn_rate: int = Field(50, ge=1)  # new connections out per second per sandbox (bursts of 4x)
    egress_bandwidth: int = Field(12500, ge=0)  # KiB/s per sandbox and direction (0: unlimited); ~100 Mbit/s
    # one address per person (hearth/proxy): http://USER:PASS@HOST:{port}, each user's port for life from the ranges
    # of HEARTH_EGRESS_PROXY_PORTS (e.g. 10001-19999); empty: no upstream proxy. The URL is never shown or logged.
    egress_proxy: str = Field("", repr=False)
    egress_proxy_ports: str = ""
    extra_ca_certs: Path | None = None  # PEM bundle of CAs every sandbox's Chromium and CLIs trust as well
    uplink_network: IPv4Network = IPv4Network("169.254.77.0/30")
    # the network namespace where the uplink's outer end lives and the host side's masquerade/forwarding is done
    # (a name under /run/netns, created by whoever owns it: e.g. a test's internet stand-in); unset: the host's own
    uplink_netns: str | None = None
    sandbox_uid: int = Field(65534, ge=1)  # CLI sandboxes (their homes persist); browser sandboxes: below
    sandbox_gid: int = Field(65534, ge=1)
    sandbox_uid_base: int = Field(2_000_000, ge=1000)  # browser sandbox of slot i runs as uid/gid base + 2*i
    screen: str = "1280x800x24"
    start_url: str = "about:blank"
    chromium: bool = True
    vnc_server: VncServerName = "xvnc"  # the sandbox desktop: TigerVNC Xvnc, or the older Xvfb + x11vnc
    # when a sandbox's Chromium starts: "queued" — after its desktop is ready, when its turn comes in the boot queue
    # behind every waiting desktop (or at once when a page must be shown); "at_boot" — with the desktop
    browser_start: BrowserStartName = "queued"
    ready_timeout: float = Field(45.0, gt=0)
    # sandboxes booting at once on this controller; more wait in line (status `queued`): hearth/session/bootqueue.py
    max_boots: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    # warm pool (hearth/session/pool.py): pre-started sandboxes per sign-in mode, e.g. "remote_browser:2,direct:1";
    # empty: off (the default)
    warm_pool: str = Field("", validation_alias=AliasChoices("HEARTH_POOL_SIZE"))
    pool_max_idle: float = Field(600.0, gt=0)  # a pooled sandbox older than this is recycled (seconds)
    viewer_wait: float = Field(30.0, gt=0)
    ws_ping_interval: float = Field(20.0, gt=0, le=25)
    session_ttl: float = Field(1800.0, gt=0)
    idle_timeout: float = Field(300.0, gt=0)
    token_ttl: float = Field(900.0, gt=0)
    token_secret: str = ""
    keep_failed: bool = False
    reconcile_interval: float = Field(60.0, gt=0)
    max_body: int = Field(64 * 1024, ge=1024)  # bytes per API request body
    rate_limit: float = Field(20.0, ge=0)  # API requests per second per client; 0: no limit
    rate_burst: float = Field(40.0, ge=1)
    rfb_port: int = 5900
    agent_port: int = 8080
    callback_port: int = Field(8700, ge=1, le=65535)  # agent → controller, on BRIDGE_IP inside the fabric only
    master_key: str = ""
    fabric_open_ports: Annotated[tuple[int, ...], NoDecode] = ()  # extra TCP ports sandboxes may reach on BRIDGE_IP
    example_issuer: str = ""
    # webhooks (hearth/webhooks): session and credential state changes POSTed here, Standard Webhooks signed
    webhook_url: str = ""
    webhook_secret: str = Field("", repr=False)  # whsec_<base64 of 24-64 random bytes>; never logged
    webhook_backoff_max: float = Field(3600.0, ge=1, le=86400)  # at most this many seconds between two attempts
    signin_mode: SigninModeName = "remote_browser"  # default of POST /api/auth/start (per-request `mode` overrides)
    cli_idle_timeout: float = Field(900.0, gt=0)
    # prompts through the person's own CLI (hearth/prompts, docs/prompts.md)
    max_prompts_per_user: int = Field(2, ge=1)  # queued or running, per user
    prompt_queue: int = Field(64, ge=1)  # queued or running prompts in the whole store; beyond: 503
    max_prompt_bytes: int = Field(256 * 1024, ge=1, le=4 << 20)  # beyond: 413
    prompt_timeout: float = Field(600.0, gt=0)  # the default and the most a request may ask for
    prompt_max_answer_bytes: int = Field(1 << 20, ge=4096)  # stored answer; beyond: a truncation marker
    prompt_retention: float = Field(30 * 86400.0, gt=0)  # answers kept this long (seconds)
    cli_retention: float = Field(0.0, ge=0)  # CLI homes unused this long are removable (seconds); 0: kept forever
    image_dir: Path | None = None  # default <data_dir>/image: vmlinux, bzImage, initrd.img, rootfs.ext4
    firecracker_bin: str = "firecracker"
    jailer_bin: str = ""
    jailer_uid: int = Field(65534, ge=1)
    jailer_gid: int = Field(65534, ge=1)
    vm_vcpus: int = Field(2, ge=1, le=32)
    vm_mem_mib: int = Field(2048, ge=512)

    @field_validator("api_keys", "fabric_open_ports", "egress_allow", "dns_upstream", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("sandbox_memory_max", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return parse_bytes(value) if isinstance(value, str) else value

    @field_validator("embed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        from hearth.gateway.embed import parse_origins

        return parse_origins(value) if isinstance(value, str | tuple | list) else value

    @model_validator(mode="after")
    def _derive_addresses(self) -> Settings:
        """BRIDGE_IP, IP_POOL_START and IP_POOL_END left unset follow INTERNAL_NETWORK: the bridge on its first host
        address, the pool every other host address (so `INTERNAL_NETWORK=10.20.0.0/21` alone sizes a node for 2,045
        sandboxes). The defaults are these for the default network; set values are kept (and checked)."""
        net, given = self.internal_network, self.model_fields_set
        if net.prefixlen > 29:
            return self  # too small to derive a pool from: what is set (or the defaults) is checked as it is
        first, last = net.network_address + 1, net.broadcast_address - 1
        derived = {"bridge_ip": first} if "bridge_ip" not in given else {}
        bridge = derived.get("bridge_ip", self.bridge_ip)
        if "ip_pool_start" not in given:
            derived["ip_pool_start"] = first + 1 if bridge == first else first
        if "ip_pool_end" not in given:
            derived["ip_pool_end"] = last - 1 if bridge == last else last
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: set once, while validating
        return self

    # ---- derived, pure ----------------------------------------------------------------------------
    @property
    def prefixlen(self) -> int:
        return self.internal_network.prefixlen

    @property
    def dial_netns(self) -> str | None:
        """The namespace the controller opens its sockets to sandboxes in: the fabric's, or — with the loopback
        driver, which has no fabric — its own (None)."""
        return None if self.driver == "loopback" else self.fabric_netns

    @property
    def pool_size(self) -> int:
        return int(self.ip_pool_end) - int(self.ip_pool_start) + 1

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hearth.db'}"

    @property
    def images(self) -> Path:
        return self.image_dir or self.data_dir / "image"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.api_listen.rpartition(":")
        return host or "127.0.0.1", int(port)


_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def parse_bytes(value: str) -> int | str:
    """'8Gi' → 8589934592 (Kubernetes' suffixes K M G, Ki Mi Gi Ti, or plain bytes); anything else unchanged, for
    the field's own validation to reject."""
    m = re.fullmatch(r"\s*(\d+)\s*(|K|M|G|Ki|Mi|Gi|Ti)\s*", value)
    return int(m[1]) * _UNITS[m[2]] if m else value


@dataclass(frozen=True)
class Origin:
    """Where one effective setting came from."""

    field: str
    variable: str
    value: str
    source: str  # "env", ".env" or "default"


def _variable_for(name: str) -> str:
    field = Settings.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        assert isinstance(first, str)
        return first
    return f"HEARTH_{name.upper()}"


def known_variables() -> dict[str, str]:
    """Environment variable name → settings field."""
    return {_variable_for(name): name for name in Settings.model_fields}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (comments and blanks skipped)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"cannot be read ({exc.strerror})"
        raise ConfigError([f"the dotenv file {path} {why}; fix it or point --env-file elsewhere"]) from None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        out[key.strip()] = value.strip().strip("'\"")
    return out


# Read outside the Settings object, by one module each (not the controller's configuration, but not unread either).
READ_ELSEWHERE: dict[str, str] = {
    "HEARTH_CLIS_CACHE": "hearth/providers/clis.py: where scripts/setup.sh installed the pinned provider CLIs",
    "HEARTH_CLIS_BIN": "hearth_agent/signin.py: the provider CLIs' bin directory inside a sandbox",
    "HEARTH_LAB_PYTHONPATH": "hearth/cluster/lab.py: the multi-node lab's nodes run another checkout",
}


def unknown_variable_problems(variables: Mapping[str, str]) -> list[str]:
    """Problems for variables that look like hearth's or the network's but are not read."""
    known = known_variables()
    problems = []
    for name in sorted(variables):
        if name in known or name in READ_ELSEWHERE:
            continue
        if name in LEGACY_NAMES:
            problems.append(f"{name} is set but not read; did you mean {LEGACY_NAMES[name]}?")
        elif name.startswith("HEARTH_") or _NETWORKISH.match(name):
            guess = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f"; did you mean {guess[0]}?" if guess else "; known names: see `hearth config check`"
            problems.append(f"{name} is set but not read{hint}")
    return problems


def consistency_problems(s: Settings) -> list[str]:
    """Cross-field checks of the network settings; each message names the fix."""
    net = s.internal_network
    problems = []
    if not _IFNAME.match(s.bridge_device):
        problems.append(
            f"BRIDGE_DEVICE={s.bridge_device!r} is not a valid interface name "
            "(1-15 characters of letters, digits, '.', '-', '_'); use e.g. br0"
        )
    if s.bridge_ip not in net:
        problems.append(
            f"BRIDGE_IP={s.bridge_ip} is outside INTERNAL_NETWORK={net}; "
            f"set BRIDGE_IP to an address in {net}, e.g. {next(net.hosts())}"
        )
    elif s.bridge_ip in (net.network_address, net.broadcast_address):
        problems.append(f"BRIDGE_IP={s.bridge_ip} is the network or broadcast address of {net}; pick a host address")
    if int(s.ip_pool_start) > int(s.ip_pool_end):
        problems.append(f"IP_POOL_START={s.ip_pool_start} is after IP_POOL_END={s.ip_pool_end}; swap them")
    for var, addr in (("IP_POOL_START", s.ip_pool_start), ("IP_POOL_END", s.ip_pool_end)):
        if addr not in net:
            problems.append(f"{var}={addr} is outside INTERNAL_NETWORK={net}; keep the pool inside the network")
    if int(s.ip_pool_start) <= int(s.ip_pool_end) and s.ip_pool_start in net and s.ip_pool_end in net:
        lo, hi = int(s.ip_pool_start), int(s.ip_pool_end)
        for label, addr in (
            ("the network address", net.network_address),
            ("the broadcast address", net.broadcast_address),
            ("BRIDGE_IP", s.bridge_ip),
        ):
            if lo <= int(addr) <= hi:
                problems.append(
                    f"the pool IP_POOL_START..IP_POOL_END ({s.ip_pool_start}..{s.ip_pool_end}) contains "
                    f"{label} {addr}; move the pool so it excludes it"
                )
    if not re.match(r"^[A-Za-z0-9_.\-]{1,40}$", s.fabric_netns):
        problems.append(f"HEARTH_FABRIC_NETNS={s.fabric_netns!r} is not a valid namespace name; use e.g. hearth")
    if s.uplink_network.prefixlen != 30:
        problems.append("HEARTH_UPLINK_NETWORK must be a /30 (two addresses: root side and fabric side)")
    if s.uplink_network.overlaps(net):
        problems.append("HEARTH_UPLINK_NETWORK overlaps INTERNAL_NETWORK; choose a separate /30")
    from hearth.egress.ranges import allow_problems

    problems += allow_problems(s)
    if s.uplink_netns and not re.match(r"^[A-Za-z0-9_.\-]{1,40}$", s.uplink_netns):
        problems.append(f"HEARTH_UPLINK_NETNS={s.uplink_netns!r} is not a valid namespace name; unset it (the host's)")
    host, _, port = s.api_listen.rpartition(":")
    if not host or not port.isdigit():
        problems.append(f"HEARTH_API_LISTEN={s.api_listen!r} must be HOST:PORT, e.g. 127.0.0.1:4000")
    if not re.match(r"^[a-z0-9][a-z0-9.\-]{0,62}$", s.node_id):
        problems.append(f"HEARTH_NODE_ID={s.node_id!r} must be 1-63 of a-z 0-9 . - (e.g. the host name)")
    if s.node_address and not re.match(r"^https?://[^/\s]+$", s.node_address):
        problems.append(
            f"HEARTH_NODE_ADDRESS={s.node_address!r} must be http(s)://HOST:PORT, e.g. http://10.0.0.5:4000"
        )
    if s.token_secret:
        from hearth.gateway.tokens.signed import parse_ring

        try:
            if any(len(k) < 16 for k in parse_ring(s.token_secret).values()):
                problems.append("HEARTH_TOKEN_SECRET: each key must be at least 16 bytes (e.g. openssl rand -hex 32)")
        except ValueError as exc:
            problems.append(str(exc))
    problems += _format_problems(s)
    problems += _node_link_problems(s)
    bad_ports = [p for p in s.fabric_open_ports if not 1 <= p <= 65535]
    if bad_ports:
        problems.append(
            f"HEARTH_FABRIC_OPEN_PORTS: {', '.join(map(str, bad_ports))} is not a TCP port; "
            "give comma-separated ports 1-65535, e.g. 8443,9000"
        )
    if s.node_dead_after <= 2 * s.node_heartbeat:
        problems.append("HEARTH_NODE_DEAD_AFTER must exceed twice HEARTH_NODE_HEARTBEAT (one late beat is not death)")
    from hearth.proxy.settings import problems as proxy_problems
    from hearth.proxy.settings import reach_problems

    problems += proxy_problems(s.egress_proxy, s.egress_proxy_ports, s.extra_ca_certs) + reach_problems(s)
    from hearth.webhooks.checks import webhook_problems

    problems += webhook_problems(s.webhook_url, s.webhook_secret)
    try:
        parse_pool_sizes(s.warm_pool)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def _format_problems(s: Settings) -> list[str]:
    """Values read as text that other parts parse later (a bad one once passed the check and failed at start)."""
    problems = []
    _, _, port = s.api_listen.rpartition(":")
    if port.isdigit() and not 1 <= int(port) <= 65535:
        problems.append(f"HEARTH_API_LISTEN={s.api_listen!r}: the port must be 1-65535, e.g. 127.0.0.1:4000")
    if not re.match(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}x(8|15|16|24|30|32)$", s.screen):
        problems.append(f"HEARTH_SCREEN={s.screen!r} must be WIDTHxHEIGHTxDEPTH, e.g. 1280x800x24")
    if s.public_url and not re.match(r"^https?://[^\s/]+(/\S*)?$", s.public_url):
        problems.append(f"HEARTH_PUBLIC_URL={s.public_url!r} must be an http(s) URL, e.g. https://example.com/hearth")
    if s.database_url:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(s.database_url).get_backend_name()
        except (ArgumentError, ValueError):
            backend = ""
        if backend not in ("sqlite", "postgresql"):
            problems.append(
                "HEARTH_DATABASE_URL must be a PostgreSQL or SQLite URL, e.g. "
                "postgresql+psycopg://user:pass@host/db (or leave it unset for SQLite in the data dir)"
            )
    if s.master_key:
        from hearth.vault.keys import VaultKeyError, parse_key

        try:
            parse_key(s.master_key)
        except VaultKeyError as exc:
            problems.append(f"{exc} (e.g. openssl rand -base64 32)")
    return problems


def _node_link_problems(s: Settings) -> list[str]:
    """The edge → node link: node credential ring, TLS files, the metrics listener."""
    problems = []
    if s.node_credential:
        from hearth.cluster.credential import parse_credential_ring

        try:
            parse_credential_ring(s.node_credential)
        except ValueError as exc:
            problems.append(str(exc))
    if (s.node_tls_cert is None) != (s.node_tls_key is None):
        problems.append("HEARTH_NODE_TLS_CERT and HEARTH_NODE_TLS_KEY go together: set both (or neither)")
    for var, path in (("CERT", s.node_tls_cert), ("KEY", s.node_tls_key), ("CA", s.node_ca)):
        if path is not None and not path.is_file():
            name = "HEARTH_NODE_CA" if var == "CA" else f"HEARTH_NODE_TLS_{var}"
            problems.append(f"{name}={str(path)!r} is not a readable file; give the PEM file's path")
    if s.node_tls_cert is not None and s.node_address.startswith("http://"):
        problems.append("HEARTH_NODE_ADDRESS must be https://… when the node serves TLS (HEARTH_NODE_TLS_CERT)")
    if s.sandbox_cgroup is not None and not s.sandbox_cgroup.is_absolute():
        problems.append(
            f"HEARTH_SANDBOX_CGROUP={str(s.sandbox_cgroup)!r} must be an absolute path, e.g. /host/cgroup/hearth-sandboxes"
        )
    if s.sandbox_cgroup is not None and s.driver in ("firecracker", "qemu"):
        problems.append(
            f"HEARTH_SANDBOX_CGROUP is honoured by the netns driver only, not HEARTH_DRIVER={s.driver} (its VMs would "
            "stay in the node's cgroup): set HEARTH_DRIVER=netns, or unset HEARTH_SANDBOX_CGROUP"
        )
    if s.driver == "loopback" and not s.allow_unisolated:
        problems.append(
            "HEARTH_DRIVER=loopback runs sandboxes as plain processes with no isolation (tests only): "
            "set HEARTH_ALLOW_UNISOLATED=1 to accept that, or choose another driver"
        )
    if s.driver == "loopback" and not s.internal_network.subnet_of(IPv4Network("127.0.0.0/8")):
        problems.append(
            f"HEARTH_DRIVER=loopback binds its sandboxes on INTERNAL_NETWORK={s.internal_network}: "
            "give it a loopback range, e.g. INTERNAL_NETWORK=127.100.0.0/22"
        )
    if s.sandbox_cgroup is None and (s.sandbox_memory_max is not None or s.sandbox_cpu_max is not None):
        problems.append(
            "HEARTH_SANDBOX_MEMORY_MAX / HEARTH_SANDBOX_CPU_MAX bound HEARTH_SANDBOX_CGROUP: set it too "
            "(e.g. /host/cgroup/hearth-sandboxes), or unset them"
        )
    if s.metrics_listen:
        host, _, port = s.metrics_listen.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            problems.append(f"HEARTH_METRICS_LISTEN={s.metrics_listen!r} must be HOST:PORT, e.g. 127.0.0.1:9400")
        elif s.metrics_listen == s.api_listen:
            problems.append("HEARTH_METRICS_LISTEN must differ from HEARTH_API_LISTEN (it is a listener of its own)")
    return problems


def parse_pool_sizes(value: str) -> dict[str, int]:
    """HEARTH_POOL_SIZE → {sign-in mode: pooled sandboxes}; "" or "0" is off. Raises ValueError naming the fix."""
    sizes: dict[str, int] = {}
    text = value.strip()
    if text in ("", "0", "off"):
        return sizes
    modes = ("remote_browser", "direct", "cli")  # cli: CLI sandboxes for prompts (hearth/clisandbox/homes.py)
    for part in (p.strip() for p in text.split(",") if p.strip()):
        mode, sep, count = part.partition(":")
        mode = mode.strip()
        if not sep or mode not in modes or not count.strip().isdigit():
            raise ValueError(
                f"HEARTH_POOL_SIZE={value!r}: each entry must be MODE:COUNT with MODE one of {', '.join(modes)} "
                "(e.g. remote_browser:2,direct:1,cli:1)"
            )
        if mode in sizes:
            raise ValueError(f"HEARTH_POOL_SIZE={value!r} names {mode} twice; give each mode once")
        sizes[mode] = int(count)
    return {m: n for m, n in sizes.items() if n > 0}


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env"), **overrides: Any
) -> Settings:
    """Read, validate and check the configuration; raise ConfigError listing every problem and its fix."""
    env = dict(os.environ if environ is None else environ)
    file_vars = read_env_file(env_file) if env_file is not None else {}
    problems = unknown_variable_problems({**file_vars, **env})
    known = known_variables()
    merged = {known[k]: v for k, v in {**file_vars, **env}.items() if k in known}
    try:
        settings = Settings.model_validate({**merged, **overrides})
    except ValidationError as exc:
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else "?"
            var = _variable_for(loc) if loc in Settings.model_fields else loc
            problems.append(f"{var}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(problems) from None
    problems += consistency_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def origins(
    settings: Settings, environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> list[Origin]:
    """Each setting, its variable, its value and where it came from."""
    env = os.environ if environ is None else environ
    file_vars = read_env_file(env_file) if env_file is not None else {}
    out = []
    for name in Settings.model_fields:
        var = _variable_for(name)
        source = "env" if var in env else ".env" if var in file_vars else "default"
        value: Any = getattr(settings, name)
        hidden = ("api_keys", "token_secret", "master_key", "webhook_secret", "node_credential", "egress_proxy")
        if name in hidden and value:
            shown = "<set, hidden>"
        elif name == "database_url" and value:
            shown = _without_password(value)
        elif isinstance(value, tuple):
            shown = ",".join(str(v) for v in value)
        else:
            shown = str(value)
        out.append(Origin(name, var, shown, source))
    return out


def _without_password(url: str) -> str:
    """A database URL as shown: its password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<set, unparsable>"
