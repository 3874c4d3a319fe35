"""Can the sign-in page load from here? The agent asks, from inside the sandbox, as its browser would: the URL's host
resolves (DNS), a TCP connection to it opens (egress), and for https a TLS handshake verifies its certificate (tls).

The first hop that fails is named the way `hearth doctor` names hops (`dns` / `egress` / `tls`), with the technical
detail; every step has a timeout, so the answer comes within seconds — not at the flow's timeout, with Chromium
showing "This site can't be reached" meanwhile. Stdlib only (the guest package).
"""

from __future__ import annotations

import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass

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


def probe(url: str, timeout: float = STEP_TIMEOUT, cafiles: tuple[str, ...] = ()) -> Unreachable | None:
    """None when the page's host answers (TLS verified for https, by the system's CAs and `cafiles` — the extra CAs
    the sandbox's browser and CLIs trust); else the first hop that failed."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if not host or parts.scheme not in ("http", "https"):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
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


def _why(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, TimeoutError | socket.timeout):
        return str(exc) or "timed out"
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)[:200]
