"""`hearth node run|list|drain|undrain` and `hearth edge`: the two roles of a multi-host hearth (hearth/cluster,
hearth/edge). `hearth serve` stays the single host: both roles in one process, node id `local`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.table import Table

from hearth import log
from hearth.cli.common import fail, settings_or_exit
from hearth.cli.node_cert import cert
from hearth.cluster import nodes
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.store.db import Database
from hearth.store.nodestates import NodeState

node_app = typer.Typer(help="The hosts of a cluster: run this host's node, list, drain.", no_args_is_help=True)


def _shared(s: Settings, role: str) -> None:
    if s.db_url.startswith("sqlite"):
        fail(
            f"`hearth {role}` shares its state with the other hosts: set HEARTH_DATABASE_URL to PostgreSQL "
            "(postgresql+psycopg://…); on one host, `hearth serve` is the whole thing",
            2,
        )
    if not s.token_secret:
        fail(f"`hearth {role}` needs the cluster's viewer-token key ring: set HEARTH_TOKEN_SECRET (kid:secret)", 2)
    if not s.api_keys:
        fail("HEARTH_API_KEYS is empty; set at least one API key (the same on every node and edge)", 2)


@node_app.command("run")
def run(
    drain: bool = typer.Option(False, "--drain", help="on stop, end this node's sessions (default: they are adopted)"),
) -> None:
    """Run this host's node: fabric, drivers, gateway, agent callbacks, its reconciler; registers and heartbeats."""
    from hearth.controller import build, make_app
    from hearth.serving.serve import check_listen, server

    s = settings_or_exit()
    _shared(s, "node run")
    if s.node_id == "local":
        fail("set HEARTH_NODE_ID to this host's name (`local` is the single-host `hearth serve`)", 2)
    log.setup()
    try:
        check_listen(s)
        ctl = build(s, drain=drain)
    except HearthError as exc:
        fail(exc.reason, 2)
    server(s, make_app(ctl)).run()


@contextlib.contextmanager
def _store(s: Settings, code: int = 1) -> Iterator[Database]:
    """The shared store. A HearthError — the store down (opening it already asks it), a refused state change — ends
    the command naming the fix, never with a traceback."""
    db: Database | None = None
    try:
        db = Database(s.db_url)
        yield db
    except HearthError as exc:
        fail(exc.reason, code)
    finally:
        if db is not None:
            db.dispose()


@node_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every registered node: state, address, capacity, active sessions, last heartbeat."""
    s = settings_or_exit()
    with _store(s) as db:
        views = db.call(nodes.list_nodes)
    if as_json:
        typer.echo(
            json.dumps([{**v.__dict__, "state": v.state.value, "heartbeat_at": str(v.heartbeat_at)} for v in views])
        )
        return
    t = Table("id", "state", "address", "active/capacity", "free slots", "heartbeat", "reason")
    for v in views:
        t.add_row(
            v.id,
            v.state.value,
            v.address,
            f"{v.active}/{v.capacity}",
            str(v.free_slots),
            str(v.heartbeat_at),
            v.reason or "",
        )
    Console().print(t)


def _move(node_id: str, target: NodeState, reason: str | None) -> None:
    s = settings_or_exit()
    with _store(s, 2) as db:
        nodes.set_state(db, node_id, target, reason)
    typer.echo(f"node {node_id} is {target.value}")


@node_app.command()
def drain(
    node_id: str, reason: str = typer.Option("drained by the operator", help="shown in `hearth node list`")
) -> None:
    """No new sessions on NODE_ID; its live sessions finish."""
    _move(node_id, NodeState.DRAINING, reason)


@node_app.command()
def undrain(node_id: str) -> None:
    """NODE_ID takes new sessions again."""
    _move(node_id, NodeState.UP, None)


node_app.command("cert")(cert)


def edge() -> None:
    """Run an edge: the public API and viewer page; places sessions and routes each to its node (stateless)."""
    from hearth.edge.app import create_edge_app
    from hearth.serving.serve import check_listen, server

    s = settings_or_exit()
    _shared(s, "edge")
    log.setup()
    try:
        check_listen(s)
    except HearthError as exc:
        fail(exc.reason, 2)
    server(s, create_edge_app(s)).run()
