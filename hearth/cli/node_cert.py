"""`hearth node cert`: issue this node's TLS certificate for its IP from the cluster's CA (hearth/cluster/nodecert.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from hearth.cli.common import fail
from hearth.errors import HearthError


def cert(
    ca_cert: Path = typer.Option(..., "--ca-cert", help="the CA's certificate (PEM)"),
    ca_key: Path = typer.Option(..., "--ca-key", help="the CA's private key (PEM, unencrypted)"),
    ip: str = typer.Option(..., "--ip", help="the node's address, as in HEARTH_NODE_ADDRESS (the host IP)"),
    out: Path = typer.Option(..., "--out", help="directory for node.pem (certificate + CA) and node.key"),
    days: int = typer.Option(90, "--days", min=1, max=825, help="validity (never past the CA's own)"),
) -> None:
    """Issue OUT/node.pem and OUT/node.key for IP from the CA: HEARTH_NODE_TLS_CERT and HEARTH_NODE_TLS_KEY."""
    import ipaddress

    from hearth.cluster.nodecert import issue

    try:
        ipaddress.ip_address(ip)
    except ValueError:
        fail(f'--ip {ip!r} is not an IP address; give the node\'s address, e.g. --ip "$HOST_IP"', 2)
    try:
        issued = issue(ca_cert, ca_key, ip, out, days)
    except HearthError as exc:
        fail(exc.reason, 2)
    typer.echo(f"{issued.cert} and {issued.key} for {ip}, valid until {issued.not_after:%Y-%m-%d %H:%M} UTC")
