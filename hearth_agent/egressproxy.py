"""The sandbox's local forward proxy: Chromium's proxy policy and the CLIs' HTTPS_PROXY point at 127.0.0.1:<port>
(no credential anywhere a process of the sandbox user can read it: argv, environment, files); this proxy adds
`Proxy-Authorization` and chains every request to the user's port on the upstream egress proxy (HEARTH_EGRESS_PROXY).

HTTP CONNECT (tunnels: TLS) and plain absolute-URI HTTP. Event-driven asyncio: one task per connection, bounded
(MAX_CONNECTIONS), every read, connect and write with a timeout. When the upstream proxy is down or refuses the
credentials (407), the client gets 502 with `X-Hearth-Hop: proxy` (never 407: Chromium would ask the person for a
password) and `on_failure` is told once per kind of failure — the agent fails the sign-in within seconds, naming the
proxy hop. Stdlib only (the guest package).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from hearth_agent.record import dataclass, field  # not dataclasses: it imports inspect (hearth_agent/record.py)

log = logging.getLogger("hearth_agent.egress")
HEAD_MAX = 16 * 1024
HEAD_TIMEOUT = 10.0  # a client's or the upstream's request/response head
CONNECT_TIMEOUT = 5.0  # to the upstream proxy: a dead one is named within seconds
IDLE_TIMEOUT = 300.0  # a tunnel with no byte either way this long is closed
MAX_CONNECTIONS = 256
HOP_HEADER = "X-Hearth-Hop"
# What no sandbox reaches, through the proxy either: the fabric's own egress rules' ranges (hearth/egress/policy.py
# BLOCKED; the documentation ranges stay reachable, as there), and IPv6's loopback, link-local, ULA and multicast.
BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
        "::/127", "fe80::/10", "fc00::/7", "ff00::/8",
    )
)  # fmt: skip
REASON_HEADER = "X-Hearth-Reason"  # what failed, for clients that show no body on a refused CONNECT (curl, probes)

Failure = Callable[[str, str], None]  # (kind: "down" | "credentials", detail without secrets)


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    authorization: str = field(default="", repr=False)  # "Basic …" or ""

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """http://[USER:PASS@]HOST:PORT → Upstream; ValueError naming the problem (never the URL: it holds a password)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("the egress proxy URL is not a URL") from None
        if parts.scheme != "http" or not parts.hostname or port is None:
            raise ValueError("the egress proxy URL must be http://[USER:PASS@]HOST:PORT")
        auth = ""
        if parts.username is not None or parts.password is not None:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, port, auth)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow(entries: object) -> tuple[Network, ...]:
    """HEARTH_EGRESS_ALLOW as the agent-config document carries it (`egress_proxy.allow`: CIDR strings); entries
    that do not parse are skipped (the controller's config check refused them already)."""
    out: list[Network] = []
    for e in entries if isinstance(entries, list | tuple) else ():
        try:
            out.append(ipaddress.ip_network(str(e), strict=False))
        except ValueError:
            log.warning("egress allow entry ignored: not a network")
    return tuple(out)


class LocalProxy:
    def __init__(
        self, upstream: Upstream | None, on_failure: Failure | None = None, allow: tuple[Network, ...] = ()
    ) -> None:
        self.upstream = upstream  # None until known (a pooled sandbox learns it when it becomes someone's)
        self.allow = allow  # HEARTH_EGRESS_ALLOW: BLOCKED ranges the operator opened (as the fabric's rules do)
        self.on_failure = on_failure
        self.failures: dict[str, str] = {}  # kind → detail, the first of each kind
        self.connections = 0  # served so far (for tests and health)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._client, host, port, reuse_address=True, backlog=128)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # let each close its transports before the loop goes away
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def _fail(self, kind: str, detail: str) -> None:
        if kind in self.failures:
            return
        self.failures[kind] = detail
        log.warning(f"egress proxy failure: {detail}", extra={"kind": kind})
        if self.on_failure is not None:
            try:
                self.on_failure(kind, detail)
            except Exception as exc:  # a broken callback must not break the proxy
                log.warning("egress failure callback failed", extra={"error": type(exc).__name__})

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._slots.locked():
                await _answer(writer, 503, "too many connections through the sandbox's proxy")
                return
            async with self._slots:
                self.connections += 1
                await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        except asyncio.CancelledError:  # stop(): the connection ends here, quietly
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        if len(head) > HEAD_MAX:
            await _answer(writer, 431, "request head too large")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            await _answer(writer, 400, "not an HTTP request")
            return
        method, uri, version = parts
        if method != "CONNECT" and not uri.startswith("http://"):
            await _answer(writer, 400, "only CONNECT and absolute http:// requests are proxied")
            return
        target = uri if method == "CONNECT" else (urlsplit(uri).netloc or "")
        if _internal(target, self.allow):
            await _answer(writer, 403, "the sandbox's proxy does not reach private, loopback or link-local addresses")
            return
        up = self.upstream
        if up is None:
            await _answer(writer, 502, "this sandbox has no egress proxy yet", proxy=True)
            return
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(up.host, up.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            why = f"no answer within {CONNECT_TIMEOUT:g}s" if isinstance(exc, TimeoutError) else _why(exc)
            detail = f"the egress proxy {up.where} cannot be reached: {why}"
            self._fail("down", detail)
            await _answer(writer, 502, detail, proxy=True)
            return
        upload: asyncio.Future[None] | None = None
        try:
            kept = [
                ln
                for ln in lines[1:]
                if ln and not ln.lower().startswith(("proxy-authorization:", "proxy-connection:"))
            ]
            auth = [f"Proxy-Authorization: {up.authorization}"] if up.authorization else []
            if method == "CONNECT":
                out = [f"CONNECT {uri} {version}", f"Host: {uri}", *auth]
            else:
                out = [lines[0], *kept, *auth]
            up_w.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            await asyncio.wait_for(up_w.drain(), HEAD_TIMEOUT)
            if method != "CONNECT":  # the request's body (if any) streams on while the answer is read
                upload = asyncio.ensure_future(_pipe(reader, up_w))
            answer = await asyncio.wait_for(up_r.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            status = _status(answer)
            if status == 407:
                detail = f"the egress proxy {up.where} refused hearth's credentials (407 Proxy Authentication Required)"
                self._fail("credentials", detail)
                await _answer(writer, 502, detail, proxy=True)
                return
            if method == "CONNECT":
                if status != 200:
                    writer.write(answer)  # the target's problem (e.g. 502 from the proxy): passed on as is
                    await writer.drain()
                    return
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
                await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            else:
                writer.write(answer)
                await _pipe(up_r, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            if not writer.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    await _answer(writer, 502, f"the egress proxy {up.where} broke off: {_why(exc)}", proxy=True)
        finally:
            if upload is not None:
                upload.cancel()
            up_w.close()


def _internal(target: str, allow: tuple[Network, ...] = ()) -> bool:
    """Whether a request's host:port names an address a sandbox must never reach through the proxy either (BLOCKED:
    private, CGNAT, loopback, link-local and metadata, multicast, reserved) and HEARTH_EGRESS_ALLOW (`allow`) does
    not list: the upstream would dial it from its own network. Names are the upstream's to resolve and judge."""
    host = target.rpartition(":")[0] if not target.endswith("]") else target
    host = host.strip("[]") or target.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allow if net.version == ip.version):
        return False
    return any(ip in net for net in BLOCKED if net.version == ip.version)


def _status(head: bytes) -> int:
    first = head.split(b"\r\n", 1)[0].split(b" ")
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else 0


async def _answer(writer: asyncio.StreamWriter, status: int, message: str, proxy: bool = False) -> None:
    body = (message + "\n").encode()
    reason = {400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large", 502: "Bad Gateway"}.get(
        status, "Error"
    )
    said = message.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
    extra = f"{HOP_HEADER}: proxy\r\n{REASON_HEADER}: {said}\r\n" if proxy else ""
    writer.write(
        (
            f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await asyncio.wait_for(src.read(65536), IDLE_TIMEOUT)
            if not data:
                break
            dst.write(data)
            await asyncio.wait_for(dst.drain(), IDLE_TIMEOUT)
    except (OSError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)[:200]
