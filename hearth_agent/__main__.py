"""`python3 -m hearth_agent --config /run/hearth/agent.json`"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import threading
import time
from typing import Any

from hearth_agent.server import AgentServer
from hearth_agent.supervisor import Supervisor, install_signals, load_config


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for k in ("service", "pid", "code", "error", "provider", "event"):
            if hasattr(record, k):
                body[k] = getattr(record, k)
        return json.dumps(body)


def main() -> int:
    ap = argparse.ArgumentParser(prog="hearth_agent")
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    log = logging.getLogger("hearth_agent")
    cfg = load_config(args.config)
    sup = Supervisor(cfg)
    server = AgentServer((cfg["ip"], int(cfg.get("agent_port", 8080))), cfg["secret"], sup.health)
    register = _routes(sup, server, cfg)
    register()
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    install_signals(sup, server.shutdown)
    log.info("agent started")
    try:
        sup.run()
    except Exception as exc:
        log.error("supervisor failed", extra={"error": str(exc)})
        sup.stop()
        return 1
    return 0


def _routes(sup: Supervisor, server: AgentServer, cfg: dict[str, Any]) -> Any:
    def open_url(body: dict[str, Any]) -> tuple[int, Any]:
        url = str(body["url"])
        if not url.startswith(("http://", "https://")):
            raise ValueError("only http(s) URLs can be opened")
        sup.open_url(url)
        return 200, {"opened": True}

    def register() -> None:
        server.route("POST", "/v1/open-url", open_url)
        try:
            signin = importlib.import_module("hearth_agent.signin")
        except ImportError:
            return
        signin.register(server, sup, cfg)

    return register


if __name__ == "__main__":
    sys.exit(main())
