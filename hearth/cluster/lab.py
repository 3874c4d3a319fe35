"""A cluster on one machine, for the multi-node tests, `hearth demo --nodes N` and bench/edge.py: every host is a
network namespace `<prefix>-h<i>` on one hub bridge (namespace `<prefix>-hub`), running its own `hearth node` with its
own data dir and fabric namespace; every edge runs `hearth edge` in `<prefix>-e<j>`. Addresses 10.77.0.0/24 exist
only inside these namespaces. PostgreSQL (on loopback of the root namespace) is reached through a forwarder this
process runs in the hub (10.77.0.1:5432); the caller reaches edges and nodes through loopback forwarders.

Everything is created here and removed by `close` (the processes by PID, the namespaces by name).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from hearth.cluster import nodes
from hearth.config import load_settings
from hearth.fabric.dial import acall_in_netns, open_connection
from hearth.fabric.fabric import Fabric
from hearth.fabric.netlink import list_netns
from hearth.store.db import Database
from hearth.store.nodestates import NodeState

NET = "10.77.0"
PORT = 4000
HUB_IP = f"{NET}.1"
BIN = Path(sys.executable).parent / "hearth"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Proc:
    name: str
    netns: str
    ip: str
    env: dict[str, str]
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    local_port: int = 0  # loopback forwarder to ip:PORT
    tls: bool = False  # serves https (a node with HEARTH_NODE_TLS_CERT)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.local_port}"

    @property
    def ws(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.local_port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                # nsenter, not `ip netns exec`: that one unshares the mount namespace, so the namespaces the node
                # mounts under /run/netns would vanish with it (as in a pod without Bidirectional propagation).
                ["nsenter", f"--net=/run/netns/{self.netns}", "--", *self.argv],
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait(10)


@dataclass
class Lab:
    prefix: str
    base: Path
    database_url: str
    n_nodes: int = 3
    n_edges: int = 2
    env: dict[str, str] = field(default_factory=dict)
    per: dict[str, dict[str, str]] = field(default_factory=dict)  # one process's own variables ("h0", "e1": {…})
    # nodes serve TLS: a directory holding ca.pem and h<i>.pem / h<i>.key (edges verify nodes against ca.pem)
    tls_dir: Path | None = None
    api_key: str = field(default_factory=lambda: secrets.token_hex(16))
    token_secret: str = field(default_factory=lambda: f"k1:{secrets.token_hex(32)}")
    nodes: list[Proc] = field(default_factory=list)
    edges: list[Proc] = field(default_factory=list)
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def fabric(self, i: int) -> str:
        return f"{self.prefix}-f{i}"

    def db(self) -> Database:
        return Database(self.database_url)

    # ---- build ------------------------------------------------------------------------------------
    async def open(self) -> None:
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.base, 0o711)
        self.db().dispose()  # the schema, once, before any node starts (as the migration Job does)
        self._netns(self.hub)
        _ip("-n", self.hub, "link", "add", "hub", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "hub")
        _ip("-n", self.hub, "link", "set", "hub", "up")
        await self._db_forwarder()
        for i in range(self.n_nodes):
            self.nodes.append(self._host(f"h{i}", 10 + i, self._node_env(i), [str(BIN), "node", "run", "--drain"]))
            self.nodes[-1].tls = self.tls_dir is not None
        for j in range(self.n_edges):
            self.edges.append(self._host(f"e{j}", 100 + j, self._edge_env(j), [str(BIN), "edge"]))
        for p in [*self.nodes, *self.edges]:
            p.local_port = await self._loopback_forwarder(p)
            p.start()
        await self.wait_nodes({p.name for p in self.nodes})
        for e in self.edges:
            await self.wait_http(e)

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _host(self, name: str, octet: int, env: dict[str, str], argv: list[str]) -> Proc:
        ns = f"{self.prefix}-{name}"
        self._netns(ns)
        _ip("-n", self.hub, "link", "add", f"p-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.hub, "link", "set", f"p-{name}", "master", "hub", "up")
        ip = f"{NET}.{octet}"
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        env = {**env, "HEARTH_API_LISTEN": f"{ip}:{PORT}", **self.per.get(name, {})}
        return Proc(name, ns, ip, env, argv, self.base / f"{name}.log")

    def _common(self, data: Path) -> dict[str, str]:
        url = make_url(self.database_url).set(host=HUB_IP, port=5432).render_as_string(hide_password=False)
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HEARTH_DATABASE_URL": url,
            "HEARTH_API_KEYS": self.api_key,
            "HEARTH_TOKEN_SECRET": self.token_secret,
            "HEARTH_DATA_DIR": str(data),
            "HEARTH_NODE_HEARTBEAT": "0.5",
            "HEARTH_NODE_DEAD_AFTER": "3",
            "HEARTH_RATE_LIMIT": "0",
            # the lab's nodes and edges from another checkout's `hearth` (a before/after comparison of a fix)
            **({"PYTHONPATH": os.environ["HEARTH_LAB_PYTHONPATH"]} if os.environ.get("HEARTH_LAB_PYTHONPATH") else {}),
            **self.env,
        }

    def _node_env(self, i: int) -> dict[str, str]:
        data = self.base / f"h{i}"
        data.mkdir(mode=0o711, exist_ok=True)
        tls = (
            {
                "HEARTH_NODE_TLS_CERT": str(self.tls_dir / f"h{i}.pem"),
                "HEARTH_NODE_TLS_KEY": str(self.tls_dir / f"h{i}.key"),
                "HEARTH_NODE_CA": str(self.tls_dir / "ca.pem"),  # a node cut off from the store asks its peers
            }
            if self.tls_dir is not None
            else {}
        )
        return {
            **self._common(data),
            **tls,
            "HEARTH_NODE_ID": f"h{i}",
            "HEARTH_NODE_ADDRESS": f"{'https' if tls else 'http'}://{NET}.{10 + i}:{PORT}",
            "HEARTH_FABRIC_NETNS": self.fabric(i),
            "HEARTH_DRIVER": "netns",
            "HEARTH_CHROMIUM": self.env.get("HEARTH_CHROMIUM", "false"),
            "HEARTH_EGRESS": self.env.get("HEARTH_EGRESS", "false"),  # a lab's nodes have no internet to reach
            "HEARTH_SANDBOX_UID_BASE": str(2_000_000 + 1000 * i),
        }

    def _edge_env(self, j: int) -> dict[str, str]:
        data = self.base / f"e{j}"
        data.mkdir(mode=0o711, exist_ok=True)
        ca = {"HEARTH_NODE_CA": str(self.tls_dir / "ca.pem")} if self.tls_dir is not None else {}
        return {**self._common(data), **ca}

    # ---- forwarders (this process; traffic stays on loopback and inside the lab's namespaces) ------------
    async def _db_forwarder(self) -> None:
        pg = make_url(self.database_url)
        target = (pg.host or "127.0.0.1", int(pg.port or 5432))
        sock = await acall_in_netns(self.hub, lambda: socket.create_server((HUB_IP, 5432), backlog=256))
        sock.setblocking(False)
        self._servers.append(
            await asyncio.start_server(lambda r, w: _pipe_to(r, w, None, *target), sock=sock, limit=2**20)
        )

    async def _loopback_forwarder(self, p: Proc) -> int:
        srv = await asyncio.start_server(lambda r, w: _pipe_to(r, w, p.netns, p.ip, PORT), "127.0.0.1", 0)
        self._servers.append(srv)
        port: int = srv.sockets[0].getsockname()[1]
        return port

    # ---- waits ------------------------------------------------------------------------------------
    async def wait_nodes(self, names: set[str], state: NodeState = NodeState.UP, timeout: float = 120) -> None:
        db = self.db()
        try:
            deadline = time.monotonic() + timeout
            while True:
                views = {v.id: v for v in await db.run(nodes.list_nodes)}
                if all(n in views and views[n].state is state for n in names):
                    return
                for p in self.nodes:
                    exited = p.popen is not None and p.popen.poll() is not None
                    if state is NodeState.UP and p.name in names and exited:
                        raise RuntimeError(f"node {p.name} exited: {p.log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nodes {sorted(names)} not {state.value} within {timeout:.0f}s: {views}")
                await asyncio.sleep(0.2)
        finally:
            db.dispose()

    async def wait_http(self, p: Proc, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{p.url}/health")).status_code == 200:
                        return
                if p.popen is not None and p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited: {p.log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{p.name} did not answer /health within {timeout:.0f}s")
                await asyncio.sleep(0.2)

    # ---- teardown ---------------------------------------------------------------------------------
    async def close(self) -> None:
        procs = [*self.edges, *self.nodes]
        for p in procs:
            p.kill(signal.SIGTERM)  # nodes run with --drain: their sessions end, sandboxes are removed
        for p in procs:
            await asyncio.to_thread(p.wait, 60)
        for srv in self._servers:
            srv.close()
        for i in range(self.n_nodes):
            s = load_settings(
                {"HEARTH_FABRIC_NETNS": self.fabric(i), "HEARTH_DATA_DIR": str(self.base / f"h{i}")}, env_file=None
            )
            with contextlib.suppress(Exception):
                await Fabric(s).down(force=True)
        for ns in reversed(self._namespaces):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", ns)
        shutil.rmtree(self.base, ignore_errors=True)

    def sandboxes(self, i: int) -> list[str]:
        """The sandbox namespaces of node i right now (named `<fabric>-s<slot>`)."""
        return [n for n in list_netns() if n.startswith(f"{self.fabric(i)}-s")]

    def leftovers(self) -> list[str]:
        """Namespaces of this lab that still exist (sandboxes, fabrics, hosts) and live processes: [] is no leak."""
        out = [n for n in list_netns() if n.startswith(self.prefix)]
        out += [
            f"pid {p.popen.pid} ({p.name})" for p in [*self.nodes, *self.edges] if p.popen and p.popen.poll() is None
        ]
        return out


async def _pipe_to(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, netns: str | None, host: str, port: int
) -> None:
    try:
        up_r, up_w = await open_connection(netns, host, port, 10)
    except (OSError, TimeoutError):
        writer.close()
        return

    async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    await asyncio.gather(copy(reader, up_w), copy(up_r, writer))
