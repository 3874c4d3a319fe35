"""The settings object: every variable hearth reads, its type, default and bounds, and what derives from them.
Frozen: pass it in, never mutate it. Network names stay compatible with the system hearth replaces
(`INTERNAL_NETWORK`, `BRIDGE_DEVICE`, `BRIDGE_IP`, `IP_POOL_START`, `IP_POOL_END`); hearth's own settings carry the
`HEARTH_` prefix."""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hearth.config.origins import parse_origins
from hearth_agent.contract.signin import SIGNIN_TIMEOUT

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
    oauth_flow_timeout: float = Field(SIGNIN_TIMEOUT, gt=0, validation_alias=AliasChoices("OAUTH_FLOW_TIMEOUT"))
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
