"""`hearth config check`: the cross-field checks of the settings, each message naming the fix. The values other
folders parse later (proxy, ranges, keys, origins, webhooks) are checked with their own parsers, which live in this
package so that every folder may import them."""

from __future__ import annotations

import re
from ipaddress import IPv4Network

from hearth.config.proxy import problems as proxy_problems
from hearth.config.proxy import reach_problems
from hearth.config.ranges import allow_problems
from hearth.config.secrets import VaultKeyError, parse_credential_ring, parse_key, parse_ring
from hearth.config.settings import Settings
from hearth.config.webhooks import webhook_problems

_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


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
    problems += proxy_problems(s.egress_proxy, s.egress_proxy_ports, s.extra_ca_certs) + reach_problems(s)
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
        try:
            parse_key(s.master_key)
        except VaultKeyError as exc:
            problems.append(f"{exc} (e.g. openssl rand -base64 32)")
    return problems


def _node_link_problems(s: Settings) -> list[str]:
    """The edge → node link: node credential ring, TLS files, the metrics listener."""
    problems = []
    if s.node_credential:
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
