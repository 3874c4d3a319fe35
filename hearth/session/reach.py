"""The provider cannot be reached from the sandbox: which hop (`dns` / `egress` / `tls`, as `hearth doctor` names
them), the session's reason and the fix — from the agent's probe of the sign-in page (hearth_agent/pageprobe.py)
or from what the provider's CLI itself said (Claude Code: "Couldn't log in: getaddrinfo EAI_AGAIN …")."""

from __future__ import annotations

import re

from hearth.errors import Hop

PAGE_HOPS = {"dns": Hop.DNS, "egress": Hop.EGRESS, "tls": Hop.TLS, "proxy": Hop.PROXY}
FIXES = {
    Hop.DNS: "give sandboxes a resolver that answers the provider's name (see `hearth doctor`)",
    Hop.EGRESS: "let sandboxes reach the internet (HEARTH_EGRESS=true, the uplink) or check the provider is up",
    Hop.TLS: "trust the provider's certificate in the sandboxes (a TLS-inspecting proxy needs its CA)",
    Hop.PROXY: "check HEARTH_EGRESS_PROXY: the proxy must be up and accept its user and password "
    "(`hearth doctor` tries it)",
}
# What CLIs (Node, Rust, Python) print when the network fails, by hop; checked in this order.
_SAID = (
    # the sandbox's local proxy answers 502 "the egress proxy … cannot be reached / refused hearth's credentials"
    (Hop.PROXY, r"egress proxy|proxy authentication required|tunneling socket could not be established"),
    (
        Hop.DNS,
        r"getaddrinfo|EAI_AGAIN|ENOTFOUND|name or service not known|temporary failure in name resolution|"
        r"dns error|could not resolve host|failed to lookup address|nodename nor servname",
    ),
    (Hop.TLS, r"certificate|UNABLE_TO_VERIFY|SELF_SIGNED|CERT_HAS_EXPIRED|\bSSL\b|\bTLS\b|handshake"),
    (
        Hop.EGRESS,
        r"ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|connection refused|"
        r"network is unreachable|no route to host|connection timed out|connect timeout|error sending request",
    ),
)
_PATTERNS = [(hop, re.compile(p, re.IGNORECASE)) for hop, p in _SAID]


def page_unreachable(detail: str) -> tuple[Hop, str]:
    """The agent's `page_unreachable` event ("[dns] <host> does not resolve …") → the hop and the session's reason."""
    tag, _, why = detail.partition("] ")
    hop = PAGE_HOPS.get(tag.removeprefix("["), Hop.AGENT)
    fix = FIXES.get(hop, "see the agent's log")
    return hop, f"[{hop.value}] the sign-in page cannot be reached from the sandbox: {why or detail} — fix: {fix}"


def network_hop(said: str) -> Hop | None:
    """The hop a CLI's own words name when its network failed; None when they are about something else."""
    for hop, pattern in _PATTERNS:
        if pattern.search(said):
            return hop
    return None


def cli_unreachable(hop: Hop, said: str) -> str:
    """The session's reason when the CLI itself could not reach its provider."""
    return f"[{hop.value}] the provider cannot be reached from the sandbox: the CLI said: {said} — fix: {FIXES[hop]}"
