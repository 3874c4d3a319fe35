"""Egress inside the sandbox: the local chaining proxy (hearth_agent/egressproxy.py) and the extra CA certificates,
from the agent config's `egress_proxy` `{"listen_port", "upstream"}` and `extra_ca_certs` (PEM) — the sealed
document, never argv or the environment.

- The proxy listens on 127.0.0.1:<listen_port> of the sandbox (Chromium's policy and the CLIs' HTTPS_PROXY point
  there; nothing there carries a credential) on an event loop of its own thread.
- `POST /v1/egress` `{"upstream": "http://USER:PASS@HOST:PORT"}`: a pooled sandbox learns its person's proxy port
  when it becomes theirs (authorised by the agent secret; never logged).
- The CLIs' environment (`child_env`; also put in the agent's own, which every child inherits): HTTPS_PROXY and
  HTTP_PROXY (and lower case) to the local proxy, NO_PROXY for loopback, NODE_USE_ENV_PROXY=1 (Node's fetch honours
  them), NODE_EXTRA_CA_CERTS=<the extra CAs>, SSL_CERT_FILE / REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE=<system bundle +
  the extra CAs>, written under ~/.hearth/ca.
- A proxy that is down or refuses the credentials is pushed to the controller as `page_unreachable` "[proxy] …":
  the session fails within seconds naming the proxy hop.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hearth_agent.config import AgentConfig, Identity, identity_of
from hearth_agent.contract import routes
from hearth_agent.controller import Outbox
from hearth_agent.server import AgentServer
from hearth_agent.supervisor import Supervisor

if TYPE_CHECKING:  # imported when a sandbox has a local proxy: asyncio is ≈1.4 MiB of an agent's memory otherwise
    import asyncio

    from hearth_agent.egressproxy import LocalProxy, Network, Upstream

log = logging.getLogger("hearth_agent.egress")
CA_DIR = ".hearth/ca"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
START_TIMEOUT = 10.0
_current: Egress | None = None


class Egress:
    def __init__(self, raw: Mapping[str, Any], home: str, identity: Callable[[], Identity] | None = None) -> None:
        """`raw`: the agent config's document; `identity`: who the agent is now (without it, the document's)."""
        self.raw, self.home = raw, home
        self.identity = identity or (lambda: identity_of(raw))
        spec = raw.get("egress_proxy")
        self.listen_port = int(spec["listen_port"]) if isinstance(spec, dict) and spec.get("listen_port") else 0
        upstream = spec.get("upstream") if isinstance(spec, dict) else None
        self.allow: tuple[Network, ...] = ()  # HEARTH_EGRESS_ALLOW
        if isinstance(spec, dict):
            from hearth_agent.egressproxy import parse_allow

            self.allow = parse_allow(spec.get("allow"))
        self.proxy: LocalProxy | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._upstream = self._parse(upstream) if isinstance(upstream, str) and upstream else None
        extra = raw.get("extra_ca_certs")
        self.extra_ca = extra if isinstance(extra, str) else ""
        self.extra_file = self.bundle_file = ""

    @staticmethod
    def _parse(url: str) -> Upstream | None:
        from hearth_agent.egressproxy import Upstream

        try:
            return Upstream.from_url(url)
        except ValueError as exc:
            log.error(f"egress proxy not used: {exc}")  # the message never holds the URL
            return None

    # ---- start ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.extra_ca:
            self._write_ca()
        if not self.listen_port:
            return
        # fail closed: should the proxy not start, the CLIs still point at it, never around it
        self.port = self.listen_port
        import asyncio

        from hearth_agent.egressproxy import LocalProxy

        self.proxy = LocalProxy(self._upstream, self._failed, self.allow)
        loop = self._loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="egress-proxy", daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self.proxy.start("127.0.0.1", self.listen_port), loop).result(
            START_TIMEOUT
        )
        log.info("local egress proxy listening", extra={"port": self.port, "upstream": self._upstream is not None})

    def stop(self) -> None:
        if self.proxy is None:
            return
        import asyncio

        if self.proxy is not None and self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(START_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _write_ca(self) -> None:
        d = os.path.join(self.home, CA_DIR)
        os.makedirs(d, mode=0o700, exist_ok=True)
        self.extra_file = os.path.join(d, "extra.pem")
        self.bundle_file = os.path.join(d, "bundle.pem")
        try:
            with open(SYSTEM_BUNDLE, encoding="utf-8") as f:
                system = f.read()
        except OSError:
            system = ""
        for path, text in (
            (self.extra_file, self.extra_ca),
            (self.bundle_file, system.rstrip("\n") + "\n" + self.extra_ca),
        ):
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)

    # ---- the CLIs ----------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.port:
            url = f"http://127.0.0.1:{self.port}"
            for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
                out[k] = url
            out["NO_PROXY"] = out["no_proxy"] = "localhost,127.0.0.1,::1"
            out["NODE_USE_ENV_PROXY"] = "1"
        if self.extra_file:
            out["NODE_EXTRA_CA_CERTS"] = self.extra_file
            for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
                out[k] = self.bundle_file
        return out

    # ---- failures and the pool --------------------------------------------------------------------
    def _failed(self, kind: str, detail: str) -> None:
        cb, who = self.raw.get("callback"), self.identity()
        if not (isinstance(cb, str) and cb and who.session_id and who.secret):
            return
        if not who.providers:  # not a sign-in's sandbox (a CLI sandbox): no session to fail, logged only
            return
        Outbox(cb, who.session_id, who.secret).event("page_unreachable", f"[proxy] {detail}", budget=30.0)

    def set_upstream(self, body: dict[str, Any]) -> tuple[int, Any]:
        url = body.get("upstream")
        if self.proxy is None:
            return 409, {"error": "this sandbox has no local egress proxy (HEARTH_EGRESS_PROXY was unset at its start)"}
        if not isinstance(url, str):
            return 400, {"error": "upstream must be the proxy URL http://[USER:PASS@]HOST:PORT"}
        up = self._parse(url)
        if up is None:
            return 400, {"error": "upstream must be the proxy URL http://[USER:PASS@]HOST:PORT"}
        self.proxy.upstream, self.proxy.failures = up, {}
        log.info("egress proxy set", extra={"proxy": up.where})
        return 200, {"proxy": up.where}


def child_env() -> dict[str, str]:
    """What a CLI started in this sandbox needs in its environment to go through the proxy and trust the extra CAs."""
    return _current.env() if _current is not None else {}


def register(server: AgentServer, sup: Supervisor, cfg: AgentConfig | Mapping[str, Any]) -> Egress:
    global _current
    raw = cfg if isinstance(cfg, Mapping) else cfg.raw
    egress = Egress(raw, sup.home, lambda: server.identity)
    try:
        egress.start()
    except (OSError, TimeoutError) as exc:  # the desktop still comes up; traffic through the proxy is refused
        log.error("local egress proxy not started", extra={"error": str(exc)})
    # Every child the agent starts from now on (the CLIs of sign-ins and prompts, the desktop) inherits it: no
    # credential in it, only the local proxy's address and the CA files. The agent's own calls to the controller
    # never use a proxy (hearth_agent/controller.py).
    os.environ.update(egress.env())
    _current = egress
    server.route("POST", routes.EGRESS, egress.set_upstream)
    return egress
