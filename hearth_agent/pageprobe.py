"""Can the sign-in page load from here? The agent asks, from inside the sandbox, as its browser would: the URL's host
resolves (DNS), a TCP connection to it opens (egress), and for https a TLS handshake verifies its certificate (tls).

The first hop that fails is named the way `hearth doctor` names hops (`dns` / `egress` / `tls`), with the technical
detail; every step has a timeout, so the answer comes within seconds — not at the flow's timeout, with Chromium
showing "This site can't be reached" meanwhile. Stdlib only (the guest package).
"""

from __future__ import annotations

import socket
import threading
import urllib.parse

from hearth_agent.record import dataclass  # not dataclasses: it imports inspect (hearth_agent/record.py)

STEP_TIMEOUT = 5.0  # seconds per step (name lookup, connect, handshake)


@dataclass(frozen=True)
class Unreachable:
    hop: str  # dns | egress | tls
    host: str
    detail: str  # technical, for the reason and the events (never shown to the person as is)


def _resolve(host: str, port: int, timeout: float) -> list[tuple[int, tuple[str, int]]]:
    """getaddrinfo has no timeout of its own: it runs in a daemon thread waited on for `timeout`."""
    out: list[tuple[int, tuple[str, int]]] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            for family, _, _, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                out.append((int(family), (str(addr[0]), int(addr[1]))))
        except (OSError, UnicodeError) as exc:
            error.append(exc)

    t = threading.Thread(target=run, name="probe-dns", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no answer to the name lookup within {timeout:g} s")
    if error:
        raise error[0]
    return out


def probe(
    url: str, timeout: float = STEP_TIMEOUT, cafiles: tuple[str, ...] = (), proxy: tuple[str, int] | None = None
) -> Unreachable | None:
    """None when the page's host answers (TLS verified for https, by the system's CAs and `cafiles` — the extra CAs
    the sandbox's browser and CLIs trust); else the first hop that failed. With `proxy` (the sandbox's local egress
    proxy, hearth_agent/egressproxy.py) the page is reached the way the browser reaches it: a CONNECT through it."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if not host or parts.scheme not in ("http", "https"):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if proxy is not None:
        return _via_proxy(host, port, parts.scheme == "https", proxy, timeout, cafiles)
    try:
        addrs = _resolve(host, port, timeout)
    except (OSError, UnicodeError) as exc:
        return Unreachable("dns", host, f"{host} does not resolve from the sandbox: {_why(exc)}")
    if not addrs:
        return Unreachable("dns", host, f"{host} has no address")
    sock: socket.socket | None = None
    failures = []
    for family, addr in addrs[:4]:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(addr)
        except OSError as exc:
            s.close()
            failures.append(f"{addr[0]}:{port}: {_why(exc)}")
            continue
        sock = s
        break
    if sock is None:
        return Unreachable("egress", host, f"no connection to {host} from the sandbox ({'; '.join(failures)})")
    with sock:
        if parts.scheme != "https":
            return None
        return _handshake(sock, host, cafiles)


def _handshake(sock: socket.socket, host: str, cafiles: tuple[str, ...]) -> Unreachable | None:
    import ssl  # here, not at the top: ≈0.75 MiB of every agent, and most sign-ins never probe an https page

    ctx = ssl.create_default_context()  # the sandbox's trust store (SSL_CERT_FILE when set), as a browser's
    for cafile in cafiles:
        try:
            ctx.load_verify_locations(cafile)
        except (OSError, ssl.SSLError):
            continue  # unreadable: the handshake says whether it mattered
    try:
        with ctx.wrap_socket(sock, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        return Unreachable("tls", host, f"the certificate of {host} does not verify: {exc.verify_message}")
    except (OSError, ssl.SSLError) as exc:
        return Unreachable("tls", host, f"no TLS handshake with {host}: {_why(exc)}")


def _via_proxy(
    host: str, port: int, tls: bool, proxy: tuple[str, int], timeout: float, cafiles: tuple[str, ...]
) -> Unreachable | None:
    """CONNECT host:port through the local proxy; its 502 with `X-Hearth-Hop: proxy` names the upstream proxy hop."""
    try:
        sock = socket.create_connection(proxy, timeout=timeout)
    except OSError as exc:
        return Unreachable("proxy", host, f"the sandbox's local egress proxy does not answer: {_why(exc)}")
    with sock:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii"))
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 16384:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        except (OSError, UnicodeError) as exc:
            return Unreachable("proxy", host, f"the sandbox's local egress proxy broke off: {_why(exc)}")
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        first = lines[0].split(" ")
        status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if status != 200:
            said = headers.get("x-hearth-reason") or (lines[0] if lines[0] else "no answer")
            hop = "proxy" if headers.get("x-hearth-hop") == "proxy" else "egress"
            return Unreachable(
                hop, host, said if hop == "proxy" else f"no connection to {host} through the proxy: {said}"
            )
        return _handshake(sock, host, cafiles) if tls else None


def _why(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, TimeoutError | socket.timeout):
        return str(exc) or "timed out"
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)[:200]


def local_proxy(env: dict[str, str]) -> tuple[str, int] | None:
    """The sandbox's local egress proxy when the CLI's HTTPS_PROXY is it (http://127.0.0.1:PORT, set by
    hearth_agent/egress.py); None for any other proxy (not probed: its answers are not ours to read)."""
    parts = urllib.parse.urlsplit(env.get("HTTPS_PROXY", ""))
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme == "http" and parts.hostname == "127.0.0.1" and port:
        return "127.0.0.1", port
    return None
