"""Host checks beyond the fabric, as a sandbox's traffic goes (the proxy is dialled from the fabric namespace when it
exists, as the sandboxes' traffic leaves; a direct handshake is made from the host):

- `proxy`: HEARTH_EGRESS_PROXY reachable and authenticated — a CONNECT to a provider's host through it, with hearth's
  credentials, on the first port of HEARTH_EGRESS_PROXY_PORTS (down → names the host and port; 407 → names the
  credentials);
- `provider certificate`: a TLS handshake with a provider's host (through the proxy when there is one) verifies with
  the trust sandboxes get: the system's CAs plus HEARTH_EXTRA_CA_CERTS (an unknown CA → names HEARTH_EXTRA_CA_CERTS).

The provider host is the example issuer's when HEARTH_EXAMPLE_ISSUER is set, else PROVIDER_HOST. Every step has a
timeout; the proxy's password is never part of the evidence.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from hearth.config.proxy import ProxySettingError, ProxyTemplate, egress_of, read_bundle
from hearth.doctor import probes
from hearth.doctor.context import Context, Step
from hearth.doctor.report import Finding
from hearth.errors import Hop
from hearth.fabric.dial import open_connection

PROVIDER_HOST = ("api.anthropic.com", 443)
STEP = 5.0
CREDS_FIX = "fix the user and password in HEARTH_EGRESS_PROXY=http://USER:PASS@HOST:{port} (the proxy answered 407)"


def provider_target(ctx: Context) -> tuple[str, int]:
    issuer = urlsplit(ctx.settings.example_issuer) if ctx.settings.example_issuer else None
    if issuer is not None and issuer.hostname:
        return issuer.hostname, issuer.port or 443
    return PROVIDER_HOST


def _netns(ctx: Context) -> str | None:
    return ctx.fabric if probes.netns_exists(ctx.fabric) else None


def _proxy(ctx: Context) -> tuple[ProxyTemplate, int] | None:
    s = ctx.settings
    try:
        egress = egress_of(s.egress_proxy, s.egress_proxy_ports, None)
    except ProxySettingError:
        return None  # the config check names it
    if egress.proxy is None:
        return None
    return egress.proxy, egress.ports[0].start


def _no_proxy(ctx: Context) -> str | None:
    return None if _proxy(ctx) is not None else "no egress proxy is configured (HEARTH_EGRESS_PROXY)"


async def _tunnel(
    ctx: Context, proxy: ProxyTemplate, port: int, host: str, tport: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A CONNECT through the proxy; (reader, writer, the proxy's status). OSError/TimeoutError: not reachable."""
    reader, writer = await open_connection(_netns(ctx), proxy.host.strip("[]"), port, STEP)
    auth = f"Proxy-Authorization: {proxy.authorization()}\r\n" if proxy.authorization() else ""
    writer.write(f"CONNECT {host}:{tport} HTTP/1.1\r\nHost: {host}:{tport}\r\n{auth}\r\n".encode())
    await asyncio.wait_for(writer.drain(), STEP)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    first = head.split(b"\r\n", 1)[0].split(b" ")
    return reader, writer, int(first[1]) if len(first) > 1 and first[1].isdigit() else 0


async def proxy_check(ctx: Context) -> Finding:
    got = _proxy(ctx)
    assert got is not None  # skipped otherwise
    proxy, port = got
    host, tport = provider_target(ctx)
    where = f"{proxy.host}:{port}"
    try:
        _, writer, status = await _tunnel(ctx, proxy, port, host, tport)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (getattr(exc, "strerror", None) or type(exc).__name__)
        return Finding.bad(
            f"the egress proxy {where} cannot be reached from the fabric: {why}",
            f"start the proxy at {where}, or fix the host in HEARTH_EGRESS_PROXY; sandboxes reach it through the "
            "fabric's uplink (HEARTH_EGRESS)",
            data={"proxy": where},
        )
    writer.close()
    ctx.memo["proxy_ok"] = status != 407
    if status == 407:
        return Finding.bad(
            f"the egress proxy {where} refused hearth's credentials (407)", CREDS_FIX, data={"proxy": where}
        )
    data = {"proxy": where, "status": status, "target": f"{host}:{tport}"}
    if status != 200:
        return Finding.good(
            f"the egress proxy {where} accepted hearth's credentials, but answered {status} to CONNECT {host}:{tport}",
            data=data,
        )
    return Finding.good(f"CONNECT {host}:{tport} through {where} accepted with hearth's credentials", data=data)


def _trust(ctx: Context) -> ssl.SSLContext:
    tls = ssl.create_default_context()
    if ctx.settings.extra_ca_certs is not None:
        tls.load_verify_locations(cadata=read_bundle(ctx.settings.extra_ca_certs))
    return tls


async def certificate_check(ctx: Context) -> Finding:
    host, tport = provider_target(ctx)
    try:
        tls = await asyncio.to_thread(_trust, ctx)
    except ProxySettingError as exc:
        return Finding.bad(str(exc), "fix HEARTH_EXTRA_CA_CERTS (`hearth config check` names the problem)")
    got = _proxy(ctx)
    via = f" through {got[0].host}:{got[1]}" if got is not None else ""
    try:
        if got is not None:
            _, writer, status = await _tunnel(ctx, got[0], got[1], host, tport)
            if status != 200:
                writer.close()
                return Finding.bad(
                    f"no connection to {host}:{tport}{via}: the proxy answered {status}",
                    "check the proxy lets hearth reach the providers' hosts",
                    hop=Hop.PROXY if status == 407 else Hop.EGRESS,
                )
        else:
            _, writer = await open_connection(None, host, tport, STEP)
        await asyncio.wait_for(writer.start_tls(tls, server_hostname=host), STEP)
    except ssl.SSLCertVerificationError as exc:
        extra = ctx.settings.extra_ca_certs
        fix = (
            f"the certificate's CA is not in HEARTH_EXTRA_CA_CERTS={extra}: add it"
            if extra is not None
            else "if a TLS-inspecting proxy signs it, set HEARTH_EXTRA_CA_CERTS to its CA bundle (PEM)"
        )
        return Finding.bad(f"the certificate of {host}{via} does not verify: {exc.verify_message}", fix)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return Finding.bad(
            f"no TLS handshake with {host}:{tport}{via}: {why}",
            "check the host's internet access (or the proxy's)",
            hop=Hop.EGRESS,
        )
    writer.close()
    return Finding.good(f"the certificate of {host}:{tport}{via} verifies (system CAs + HEARTH_EXTRA_CA_CERTS)")


def _no_egress_path(ctx: Context) -> str | None:
    if _proxy(ctx) is not None and ctx.memo.get("proxy_ok") is not True:
        return "needs proxy"
    if _proxy(ctx) is None and not ctx.settings.egress:
        return "sandboxes have no way out (HEARTH_EGRESS off, no HEARTH_EGRESS_PROXY)"
    return None


STEPS = [
    Step("proxy", Hop.PROXY, proxy_check, 3 * STEP, skip=_no_proxy, timeout_hint="check HEARTH_EGRESS_PROXY's host"),
    Step(
        "provider certificate",
        Hop.TLS,
        certificate_check,
        4 * STEP,
        skip=_no_egress_path,
        timeout_hint="check the host's internet access",
    ),
]
