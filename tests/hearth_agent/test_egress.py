"""The agent's egress extension from its config document: the local proxy on 127.0.0.1, the CLIs' environment (a
Python client — what a CLI does — reaches a TLS server of a throwaway CA through the user's upstream port, trusting
the extra CA from SSL_CERT_FILE), the page probe through the proxy naming the proxy hop, the failure pushed to the
controller as `page_unreachable` "[proxy] …", and a pooled sandbox given its upstream later. Loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hearth.serving.local import free_port
from hearth.session.reach import page_unreachable
from hearth.standins.proxyserver import ProxyServer, ProxyThread
from hearth_agent.egress import Egress
from hearth_agent.pageprobe import local_proxy, probe
from tests.proxy.tlskit import BODY, tls_server

HOST = "provider.test"
SECRET = "Pr0xy-secret"
CLIENT = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode(), end='')"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    with tls_server(tmp_path_factory.mktemp("tls"), HOST) as got:
        yield got.ca, got.port


@pytest.fixture
def upstream() -> Iterator[ProxyServer]:
    srv = ProxyServer("127.0.0.1", (0,), {"alice": SECRET}, resolve={HOST: "127.0.0.1"})
    with ProxyThread(srv):
        yield srv


class Events(BaseHTTPRequestHandler):
    got: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Events.got.append({"path": self.path, **json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def controller() -> Iterator[str]:
    Events.got = []
    srv = HTTPServer(("127.0.0.1", 0), Events)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def make(tmp_path: Path, ca: Path, upstream: str, callback: str = "") -> Egress:
    raw = {
        "egress_proxy": {"listen_port": free_port(), "upstream": upstream},
        "extra_ca_certs": ca.read_text(),
        "callback": callback,
        "session_id": "s-egress",
        "secret": "x" * 32,
        "providers": ["0" * 64],  # a sign-in's sandbox: its failures are pushed
    }
    eg = Egress(raw, str(tmp_path))
    eg.start()
    return eg


def test_a_cli_goes_through_the_users_port_and_trusts_the_extra_ca(
    tmp_path: Path, tls: tuple[Path, int], upstream: ProxyServer
) -> None:
    ca, port = tls
    eg = make(tmp_path, ca, f"http://alice:{SECRET}@127.0.0.1:{upstream.bound[0]}")
    try:
        env = eg.env()
        assert env["HTTPS_PROXY"] == f"http://127.0.0.1:{eg.port}" and env["NO_PROXY"].startswith("localhost")
        assert env["NODE_EXTRA_CA_CERTS"].endswith(".hearth/ca/extra.pem")
        bundle = Path(env["SSL_CERT_FILE"]).read_text()
        assert ca.read_text().strip() in bundle and bundle.count("BEGIN CERTIFICATE") > 10  # system CAs + the extra
        assert SECRET not in json.dumps(env)
        run = subprocess.run(
            [sys.executable, "-c", CLIENT, f"https://{HOST}:{port}/"],
            env={"PATH": os.environ["PATH"], **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0 and run.stdout == BODY.decode(), run.stderr
        assert probe(f"https://{HOST}:{port}/", cafiles=(env["SSL_CERT_FILE"],), proxy=local_proxy(env)) is None
    finally:
        eg.stop()
    assert {(s.port, s.user, s.target) for s in upstream.seen} == {(upstream.bound[0], "alice", f"{HOST}:{port}")}


def test_refused_credentials_fail_the_probe_and_are_pushed_naming_the_proxy(
    tmp_path: Path, tls: tuple[Path, int], upstream: ProxyServer, controller: str
) -> None:
    ca, port = tls
    eg = make(tmp_path, ca, f"http://alice:wrong@127.0.0.1:{upstream.bound[0]}", controller)
    try:
        found = probe(f"https://{HOST}:{port}/", proxy=local_proxy(eg.env()))
        assert found is not None and found.hop == "proxy" and "refused hearth's credentials" in found.detail
        for _ in range(200):
            if Events.got:
                break
            threading.Event().wait(0.05)
        assert [e["event"] for e in Events.got] == ["page_unreachable"]
        detail = Events.got[0]["detail"]
        assert detail.startswith("[proxy] the egress proxy 127.0.0.1:") and "wrong" not in detail
        hop, reason = page_unreachable(detail)
        assert hop.value == "proxy" and "HEARTH_EGRESS_PROXY" in reason
    finally:
        eg.stop()


def test_a_pooled_sandbox_gets_its_upstream_when_it_becomes_someones(
    tmp_path: Path, tls: tuple[Path, int], upstream: ProxyServer
) -> None:
    ca, port = tls
    eg = make(tmp_path, ca, "")
    try:
        found = probe(f"https://{HOST}:{port}/", proxy=local_proxy(eg.env()))
        assert found is not None and found.hop == "proxy" and "no egress proxy yet" in found.detail
        status, body = eg.set_upstream({"upstream": f"http://alice:{SECRET}@127.0.0.1:{upstream.bound[0]}"})
        assert status == 200 and SECRET not in json.dumps(body)
        assert probe(f"https://{HOST}:{port}/", cafiles=(str(ca),), proxy=local_proxy(eg.env())) is None
        assert eg.set_upstream({"upstream": "socks5://x"})[0] == 400
    finally:
        eg.stop()
