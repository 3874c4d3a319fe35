"""The config drive: how a VM guest receives its per-sandbox settings and secret (every VM driver, one format).

A small raw, read-only virtio disk (the second one: `/dev/vdb` in the guest; the kernel command line says
`hearth.config=/dev/vdb`): `HEARTHCFG1\\n` + one JSON object + `\\n`, NUL-padded to a multiple of 4 KiB. The same
format as `hearth.sandbox.firecracker.plan.config_drive`. The secret never appears on the kernel command line
(`/proc/cmdline` is world-readable in the guest and VMMs log it).

The guest (`hearth_boot.py`) adds what it knows itself: `ip` from the kernel's `ip=` argument, and a default
`callback` URL on the gateway.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from hearth.fabric.slot import Slot
from hearth_agent.contract import document as contract

MAGIC = b"HEARTHCFG1\n"
BLOCK = 4096
DEVICE = "/dev/vdb"
LOCAL_PROXY_PORT = 3128  # the agent's local egress proxy on the sandbox's own 127.0.0.1 (hearth_agent/egress.py)


class Spec(Protocol):
    """What the document is made of: a sandbox's spec as the guest sees it (hearth.sandbox.base.SandboxSpec is one;
    the drivers sit beside the guest folder and import it, not the reverse)."""

    @property
    def session_id(self) -> str: ...
    @property
    def slot(self) -> Slot: ...
    @property
    def secret(self) -> str: ...
    @property
    def providers(self) -> tuple[str, ...]: ...
    @property
    def screen(self) -> str: ...
    @property
    def start_url(self) -> str: ...
    @property
    def chromium(self) -> bool: ...
    @property
    def browser_on_request(self) -> bool: ...
    @property
    def rfb_port(self) -> int: ...
    @property
    def agent_port(self) -> int: ...
    @property
    def desktop(self) -> bool: ...
    @property
    def vnc_server(self) -> str: ...
    @property
    def local_proxy(self) -> bool: ...
    @property
    def egress_proxy(self) -> str: ...
    @property
    def egress_allow(self) -> tuple[str, ...]: ...
    @property
    def extra_ca(self) -> str: ...


def document(spec: Spec, callback_port: int) -> dict[str, Any]:
    """The agent configuration for `spec` (what the netns driver writes to agent.json, minus nothing): the contract's
    document (hearth_agent/contract/document.py)."""
    return contract.build(
        spec.secret,
        spec.session_id,
        spec.providers,
        f"http://{spec.slot.gateway}:{callback_port}",
        screen=spec.screen,
        start_url=spec.start_url,
        chromium=spec.chromium,
        browser_on_request=spec.browser_on_request,
        rfb_port=spec.rfb_port,
        agent_port=spec.agent_port,
        desktop=spec.desktop,
        vnc_server=spec.vnc_server,
        # the guest's /etc/resolv.conf (hearth_boot.py): the fabric's DNS forwarder on the bridge (hearth/egress/dns.py)
        nameservers=[str(spec.slot.gateway)],
        # hearth_agent/egress.py: the local proxy (and the upstream URL with its credentials), the extra CAs
        # (`allow`: HEARTH_EGRESS_ALLOW, the private ranges it may reach as the fabric's rules do)
        egress_proxy=(
            {"listen_port": LOCAL_PROXY_PORT, "upstream": spec.egress_proxy, "allow": list(spec.egress_allow)}
            if spec.local_proxy
            else None
        ),
        extra_ca_certs=spec.extra_ca,
    )


def encode(doc: dict[str, Any]) -> bytes:
    raw = MAGIC + json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    size = -(-len(raw) // BLOCK) * BLOCK
    return raw.ljust(size, b"\0")


def decode(data: bytes) -> dict[str, Any]:
    if not data.startswith(MAGIC):
        raise ValueError("not a hearth config drive (bad magic)")
    doc = json.loads(data[len(MAGIC) :].split(b"\0", 1)[0])
    if not isinstance(doc, dict):
        raise ValueError("the hearth config drive does not hold a JSON object")
    return doc
