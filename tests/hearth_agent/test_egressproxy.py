"""The sandbox's local proxy chains to the upstream egress proxy with the user's credentials: curl (a CLI-ish client)
reaches a TLS server signed by a throwaway CA through it, the upstream records the user and the port; a proxy that
refuses the credentials or is down is answered 502 naming the proxy hop — at once, not at a flow timeout — and the
failure is reported once. Real sockets on loopback; the upstream is hearth/standins/proxyserver.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hearth.standins.proxyserver import ProxyServer
from hearth.standins.standin import _certs
from hearth_agent.egressproxy import LocalProxy, Upstream, parse_allow

HOST = "provider.test"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """An HTTPS server on loopback for provider.test, its certificate from a throwaway CA (ca.pem)."""
    d = tmp_path_factory.mktemp("tls")
    ca, leaf, key = _certs((HOST,))
    (d / "ca.pem").write_bytes(ca)
    (d / "leaf.pem").write_bytes(leaf)
    (d / "key.pem").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "leaf.pem", d / "key.pem")
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    s.settimeout(10)
                    s.recv(65536)
                    body = b"hello from the provider\n"
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            except (OSError, ssl.SSLError):
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield d / "ca.pem", port
    srv.close()


async def curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", "-D", "-", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def upstream(tls: tuple[Path, int]) -> AsyncIterator[ProxyServer]:
    srv = ProxyServer(
        "127.0.0.1", (0, 0), {"alice": "pa:ss@w0rd"}, resolve={HOST: "127.0.0.1", "web.test": "127.0.0.1"}
    )
    await srv.start()
    yield srv
    await srv.stop()


async def local(up: Upstream | None, failures: list[tuple[str, str]]) -> tuple[LocalProxy, int]:
    proxy = LocalProxy(up, lambda kind, detail: failures.append((kind, detail)))
    return proxy, await proxy.start()


async def test_a_client_reaches_a_tls_server_through_the_users_port(
    upstream: ProxyServer, tls: tuple[Path, int]
) -> None:
    ca, port = tls
    failures: list[tuple[str, str]] = []
    users_port = upstream.bound[1]
    proxy, lp = await local(Upstream.from_url(f"http://alice:pa%3Ass%40w0rd@127.0.0.1:{users_port}"), failures)
    try:
        code, out, err = await curl("--proxy", f"http://127.0.0.1:{lp}", "--cacert", str(ca), f"https://{HOST}:{port}/")
        assert code == 0 and "hello from the provider" in out, (out, err)
        # without the extra CA the same request fails on the certificate: the trust is what made it pass
        code, _, err = await curl("--proxy", f"http://127.0.0.1:{lp}", f"https://{HOST}:{port}/")
        assert code == 60, err
    finally:
        await proxy.stop()
    assert {(s.port, s.user, s.method, s.target, s.status) for s in upstream.seen} == {
        (users_port, "alice", "CONNECT", f"{HOST}:{port}", 200)
    }
    assert failures == []


async def test_plain_http_goes_through_with_the_credentials_added(upstream: ProxyServer) -> None:
    web = await asyncio.start_server(_http_answer, "127.0.0.1", 0)
    wport = web.sockets[0].getsockname()[1]
    proxy, lp = await local(Upstream.from_url(f"http://alice:pa%3Ass%40w0rd@127.0.0.1:{upstream.bound[0]}"), [])
    try:
        code, out, err = await curl("--proxy", f"http://127.0.0.1:{lp}", f"http://web.test:{wport}/x?y=1")
        assert code == 0 and "got GET /x?y=1" in out, (out, err)
        assert "proxy-authorization" not in out.lower()  # the target never sees the proxy's header
    finally:
        await proxy.stop()
        web.close()
    assert [(s.port, s.user, s.method) for s in upstream.seen] == [(upstream.bound[0], "alice", "GET")]


async def _http_answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    head = (await r.readuntil(b"\r\n\r\n")).decode()
    body = f"got {head.splitlines()[0].rsplit(' ', 1)[0]}\n{head}".encode()
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await w.drain()
    w.close()


async def test_refused_credentials_name_the_proxy_hop_once(upstream: ProxyServer, tls: tuple[Path, int]) -> None:
    ca, port = tls
    failures: list[tuple[str, str]] = []
    proxy, lp = await local(Upstream.from_url(f"http://alice:wrong@127.0.0.1:{upstream.bound[0]}"), failures)
    try:
        for _ in range(2):
            code, out, _ = await curl(
                "--proxy", f"http://127.0.0.1:{lp}", "--cacert", str(ca), f"https://{HOST}:{port}/"
            )
            assert code != 0 and "502" in out.splitlines()[0] and "X-Hearth-Hop: proxy" in out, out
            assert "407" in out and "credentials" in out and "wrong" not in out
    finally:
        await proxy.stop()
    assert [k for k, _ in failures] == ["credentials"]  # told once
    assert "wrong" not in failures[0][1] and f"127.0.0.1:{upstream.bound[0]}" in failures[0][1]
    assert {s.status for s in upstream.seen} == {407}


async def test_a_proxy_that_is_down_is_named_at_once() -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    failures: list[tuple[str, str]] = []
    proxy, lp = await local(Upstream.from_url(f"http://u:p@127.0.0.1:{dead_port}"), failures)
    try:
        code, out, _ = await curl("--proxy", f"http://127.0.0.1:{lp}", "https://provider.test/")
        assert code != 0 and "X-Hearth-Hop: proxy" in out and "cannot be reached" in out, out
    finally:
        await proxy.stop()
    assert [k for k, _ in failures] == ["down"]


async def test_no_upstream_yet_is_refused_naming_the_proxy() -> None:
    proxy, lp = await local(None, [])
    try:
        _code, out, _ = await curl("--proxy", f"http://127.0.0.1:{lp}", "http://example.test/")
        assert "502" in out.splitlines()[0] and "X-Hearth-Hop: proxy" in out
    finally:
        await proxy.stop()


def test_the_upstream_url_parses_without_showing_its_password() -> None:
    up = Upstream.from_url("http://alice:pa%3Ass%40w0rd@proxy.example.com:10007")
    assert (up.host, up.port, up.authorization) == ("proxy.example.com", 10007, "Basic YWxpY2U6cGE6c3NAdzByZA==")
    assert "w0rd" not in repr(up) and "YWxp" not in repr(up)
    with pytest.raises(ValueError, match="HOST:PORT") as caught:
        Upstream.from_url("socks5://alice:secretpw@proxy:1")
    assert "secretpw" not in str(caught.value)


async def test_internal_addresses_are_refused_before_the_upstream(upstream: ProxyServer) -> None:
    """The upstream would dial them from its own network: metadata, private, loopback, CGNAT, ULA literals."""
    proxy, lp = await local(Upstream.from_url(f"http://alice:pa%3Ass%40w0rd@127.0.0.1:{upstream.bound[0]}"), [])
    try:
        for target in (
            "169.254.169.254:80",
            "10.1.2.3:443",
            "127.0.0.1:22",
            "100.64.0.1:443",
            "[::1]:443",
            "[fd00::1]:443",
        ):
            _code, out, _ = await curl("--proxy", f"http://127.0.0.1:{lp}", "-p", f"https://{target}/")
            assert out.splitlines()[0].startswith("HTTP/1.1 403"), (target, out)
        _code, out, _ = await curl("--proxy", f"http://127.0.0.1:{lp}", "http://169.254.169.254/latest/meta-data/")
        assert out.splitlines()[0].startswith("HTTP/1.1 403"), out
    finally:
        await proxy.stop()
    assert upstream.seen == []  # nothing of it reached the upstream
    from hearth.egress.policy import BLOCKED as FABRIC_BLOCKED
    from hearth_agent.egressproxy import BLOCKED

    assert {n for n in BLOCKED if n.version == 4} == set(FABRIC_BLOCKED)  # one policy, in the fabric and here


async def test_an_address_literal_in_a_range_hearth_egress_allow_lists_goes_through(
    upstream: ProxyServer, tls: tuple[Path, int]
) -> None:
    """HEARTH_EGRESS_ALLOW reaches the local proxy as `allow` (the agent-config document's `egress_proxy.allow`):
    a literal in a listed range is chained to the upstream as the fabric's rules let it out; the rest of BLOCKED
    (the metadata address, another private range) is still refused before the upstream."""
    _ca, port = tls
    allow = parse_allow(["127.0.0.1/32", "not-a-network"])
    assert [str(n) for n in allow] == ["127.0.0.1/32"]
    users_port = upstream.bound[0]
    proxy = LocalProxy(Upstream.from_url(f"http://alice:pa%3Ass%40w0rd@127.0.0.1:{users_port}"), None, allow)
    lp = await proxy.start()
    try:
        code, out, err = await curl("--proxy", f"http://127.0.0.1:{lp}", "-k", f"https://127.0.0.1:{port}/")
        assert code == 0 and "hello from the provider" in out, (out, err)
        for target in ("127.0.0.2:443", "169.254.169.254:80", "10.1.2.3:443"):
            _code, out, _ = await curl("--proxy", f"http://127.0.0.1:{lp}", "-p", f"https://{target}/")
            assert out.splitlines()[0].startswith("HTTP/1.1 403"), (target, out)
    finally:
        await proxy.stop()
    assert [(s.user, s.target, s.status) for s in upstream.seen] == [("alice", f"127.0.0.1:{port}", 200)]
