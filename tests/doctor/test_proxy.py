"""The doctor's `proxy` and `provider certificate` hops, each fault injected on loopback (no fabric: the checks dial
from the host then): a proxy that is down, one that refuses the credentials (407), a provider certificate of an
unknown CA (no HEARTH_EXTRA_CA_CERTS, or another CA's bundle) — each named with its evidence and fix; healthy, both
pass. `hearth doctor`'s host diagnosis runs them."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.doctor import proxy
from hearth.doctor.checks import diagnose
from hearth.doctor.context import Context, Parts, run_steps
from hearth.doctor.report import CheckResult
from hearth.errors import Hop
from hearth.standins.proxyserver import ProxyServer, ProxyThread
from hearth.standins.standin import _certs
from tests.proxy.tlskit import TlsServer, tls_server

HOST = "provider.test"
SECRET = "Doctor-pw-1"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    with tls_server(tmp_path_factory.mktemp("tls"), HOST) as srv:
        yield srv


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    srv = ProxyServer("127.0.0.1", (0,), {"alice": SECRET}, resolve={HOST: "127.0.0.1"})
    with ProxyThread(srv) as ports:
        yield ports[0]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


async def walk(settings: Settings) -> dict[str, CheckResult]:
    ctx = Context(Parts(settings=settings, environ={}, env_file=None), deadline=time.monotonic() + 60)
    return {r.name: r for r in await run_steps(ctx, proxy.STEPS)}


def env(port: int, tls: TlsServer, password: str = SECRET, ca: Path | None = None) -> dict[str, str]:
    out = {
        "HEARTH_EGRESS_PROXY": f"http://alice:{password}@127.0.0.1:{{port}}",
        "HEARTH_EGRESS_PROXY_PORTS": f"{port}-{port + 1}" if port < 65535 else str(port),
        "HEARTH_EXAMPLE_ISSUER": f"https://{HOST}:{tls.port}",
        "HEARTH_EGRESS": "signin",
        "HEARTH_EGRESS_ALLOW": "127.0.0.1/32",  # the test's proxy is on loopback
    }
    if ca is not None:
        out["HEARTH_EXTRA_CA_CERTS"] = str(ca)
    return out


async def test_healthy_both_pass(make_settings: Callable[..., Settings], upstream: int, tls: TlsServer) -> None:
    got = await walk(make_settings(**env(upstream, tls, ca=tls.ca)))
    assert got["proxy"].ok is True and f"CONNECT {HOST}:{tls.port}" in got["proxy"].evidence
    assert got["provider certificate"].ok is True and "verifies" in got["provider certificate"].evidence
    assert all(SECRET not in (r.evidence + r.hint) for r in got.values())


async def test_a_proxy_that_is_down_is_named(make_settings: Callable[..., Settings], tls: TlsServer) -> None:
    dead = closed_port()
    got = await walk(make_settings(**env(dead, tls, ca=tls.ca)))
    res = got["proxy"]
    assert res.ok is False and res.hop is Hop.PROXY
    assert f"127.0.0.1:{dead} cannot be reached" in res.evidence and "HEARTH_EGRESS_PROXY" in res.hint
    assert got["provider certificate"].ok is None  # not checked behind a broken proxy


async def test_refused_credentials_are_named(
    make_settings: Callable[..., Settings], upstream: int, tls: TlsServer
) -> None:
    got = await walk(make_settings(**env(upstream, tls, password="wrong-pw", ca=tls.ca)))
    res = got["proxy"]
    assert res.ok is False and res.hop is Hop.PROXY and "407" in res.evidence
    assert "user and password in HEARTH_EGRESS_PROXY" in res.hint and "wrong-pw" not in res.evidence + res.hint


async def test_an_unknown_ca_names_the_extra_ca_setting(
    make_settings: Callable[..., Settings], upstream: int, tls: TlsServer, tmp_path: Path
) -> None:
    got = await walk(make_settings(**env(upstream, tls)))
    res = got["provider certificate"]
    assert got["proxy"].ok is True and res.ok is False and res.hop is Hop.TLS
    assert "does not verify" in res.evidence and "set HEARTH_EXTRA_CA_CERTS" in res.hint
    other = tmp_path / "other-ca.pem"
    other.write_bytes(_certs(("elsewhere.test",))[0])
    got = await walk(make_settings(**env(upstream, tls, ca=other)))
    res = got["provider certificate"]
    assert res.ok is False and f"not in HEARTH_EXTRA_CA_CERTS={other}" in res.hint


async def test_the_host_diagnosis_runs_them(
    make_settings: Callable[..., Settings], upstream: int, tls: TlsServer
) -> None:
    report = await diagnose(
        Parts(settings=make_settings(**env(upstream, tls, password="nope")), environ={}, env_file=None)
    )
    res = report.check("proxy")
    assert res.ok is False and res.hop is Hop.PROXY
    assert "provider certificate" in {c.name for c in report.checks}


async def test_without_a_proxy_or_egress_they_are_skipped(make_settings: Callable[..., Settings]) -> None:
    got = await walk(make_settings())
    assert got["proxy"].ok is None and "HEARTH_EGRESS_PROXY" in got["proxy"].evidence
    assert got["provider certificate"].ok is None
