"""`python3 -m hearth_agent --config /run/hearth/agent.json` (or `--config /dev/fd/N`: a pipe, read once and closed)

The agent makes itself non-dumpable at start (prctl PR_SET_DUMPABLE 0): processes of the same uid — the desktop and
the browser in the netns driver — cannot ptrace it or read its memory, environment or descriptors through /proc.

Logs JSON lines to stderr (never the secret). SIGTERM/SIGINT: stop every child (TERM, KILL after 3 s), then exit.

Start order (a cold desktop's path): the config and the supervisor's modules only, then the display starts in the
supervisor thread; the HTTP server (hearth_agent/httpmini.py, the routes, the extensions) is imported and built meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from hearth_agent.config import AgentConfig, ConfigError, load_config
from hearth_agent.contract import routes
from hearth_agent.record import dataclass  # not dataclasses: it imports inspect (hearth_agent/record.py)
from hearth_agent.supervisor import Supervisor, Unavailable

if TYPE_CHECKING:  # imported by build_server: after the display started
    from hearth_agent.server import AgentServer

log = logging.getLogger("hearth_agent")
# optional modules with `register(server, supervisor, config)`
EXTENSIONS = ("hearth_agent.egress", "hearth_agent.signin", "hearth_agent.promptrun")
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {"ts": round(time.time(), 3), "level": record.levelname.lower()}
        body["msg"] = record.getMessage()
        body.update({k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def open_url_route(sup: Supervisor) -> Any:
    from urllib.parse import urlsplit

    from hearth_agent.server import HttpError

    def open_url(body: dict[str, Any]) -> tuple[int, Any]:
        url = body.get("url")
        if not isinstance(url, str) or len(url) > 8192:
            raise HttpError(400, "url must be a string")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise HttpError(400, "only absolute http(s) URLs can be opened")
        try:
            sup.open_url(url)
        except Unavailable as exc:
            raise HttpError(409, str(exc)) from None
        return 200, {"opened": True}

    return open_url


def build_server(cfg: AgentConfig, sup: Supervisor) -> AgentServer:
    from hearth_agent.browser import browser_route
    from hearth_agent.personalise import personalise_route
    from hearth_agent.server import AgentServer

    server = AgentServer((cfg.ip, cfg.agent_port), cfg.identity, sup.health)
    server.wait_ready = sup.wait_display  # GET /health?wait=<s>: answered once the display runs (no polling)
    server.route("POST", routes.OPEN_URL, open_url_route(sup))
    server.route("POST", routes.BROWSER, browser_route(sup))
    server.route("POST", routes.PERSONALISE, personalise_route(server))
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                log.error("extension failed to import", extra={"extension": name, "error": str(exc)})
            continue
        module.register(server, sup, cfg)
        log.info("extension registered", extra={"extension": name})
    return server


def notify(fd: int) -> None:
    """Tell the driver the API listens (its readiness by notification, not by polling the port), then close."""
    try:
        os.write(fd, b"listening\n")
    except OSError as exc:
        log.warning("could not notify the driver", extra={"error": str(exc)})
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def shield() -> None:
    """PR_SET_DUMPABLE 0: no ptrace, no /proc/<pid>/mem|environ|fd for other processes of this uid (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
    except (OSError, AttributeError) as exc:
        log.warning("could not make the agent non-dumpable", extra={"error": str(exc)})


def one_malloc_arena() -> None:
    """glibc gives each thread that allocates an arena of its own (≈0.3 MiB of an idle agent's six threads, in
    every sandbox); the agent's threads mostly sleep, so one arena is enough (mallopt M_ARENA_MAX = 1, before any
    thread starts). Not glibc (musl): nothing to do."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX


def wcwidth_alone() -> None:
    """pyte needs one function of wcwidth (`from wcwidth import wcwidth`), but the package's __init__ imports all of
    it — text wrapping, graphemes, hyperlinks, and through them secrets, hmac, hashlib's OpenSSL, random: ≈1.1 MiB
    of every agent (issue 25). So the package is registered without running its __init__, holding only the function
    its __init__ binds when its C extension is absent (wcwidth._wcwidth.wcwidth, the same lru-cached code). With the
    C extension, another layout of wcwidth, or wcwidth already imported: the package as it is. In the agent's own
    process only (main), never where other code may use the rest of wcwidth."""
    spec = importlib.util.find_spec("wcwidth") if "wcwidth" not in sys.modules else None
    where = spec.submodule_search_locations if spec is not None else None
    if spec is None or not where or any(n.startswith("_wcwidth_c") for d in where for n in os.listdir(d)):
        return
    sys.modules["wcwidth"] = pkg = importlib.util.module_from_spec(spec)
    try:
        from wcwidth._wcwidth import wcwidth
    except ImportError:
        for name in [m for m in sys.modules if m == "wcwidth" or m.startswith("wcwidth.")]:
            del sys.modules[name]
        return
    vars(pkg)["wcwidth"] = wcwidth


USAGE = "usage: hearth_agent --config PATH [--notify-fd FD]"


@dataclass(frozen=True)
class Args:
    config: str  # path of the agent's JSON config
    notify_fd: int | None  # write 'listening' to this pipe once the API accepts connections


def usage_error(why: str) -> NoReturn:
    print(f"{USAGE}\nhearth_agent: error: {why}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv: list[str]) -> Args:
    """`--config PATH [--notify-fd FD]` (also `--opt=value`). Not argparse: its import (gettext, locale, …) is
    ≈0.35 MiB of every agent's memory, for two options. A usage error exits 2, as argparse's does."""
    found: dict[str, str] = {}
    rest = list(argv)
    while rest:
        opt, eq, value = rest.pop(0).partition("=")
        if opt not in ("--config", "--notify-fd") or opt in found:
            usage_error(f"unexpected argument {opt!r}")
        if not eq:
            if not rest:
                usage_error(f"{opt} needs a value")
            value = rest.pop(0)
        found[opt] = value
    if "--config" not in found:
        usage_error("--config is required")
    fd = found.get("--notify-fd")
    if fd is not None and not fd.lstrip("-").isdigit():
        usage_error("--notify-fd must be an integer")
    return Args(found["--config"], int(fd) if fd is not None else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    one_malloc_arena()
    wcwidth_alone()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        log.error(str(exc))
        return 2
    shield()  # before any other process of this uid (desktop, browser) is started
    sup = Supervisor(cfg)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        sup.request_stop(signal.Signals(signum).name)  # only sets an event: nothing that could deadlock here

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failed: list[bool] = []

    def supervise() -> None:
        try:
            sup.run()
        except Exception:
            log.exception("supervisor failed")
            failed.append(True)

    # The display starts now, while the HTTP server is built (its extensions imported): a cold desktop's long pole
    # runs beside the rest of the agent's start instead of after it. The main thread only waits (and takes signals).
    supervisor = threading.Thread(target=supervise, name="supervisor")
    supervisor.start()
    try:
        server = build_server(cfg, sup)
    except BaseException as exc:
        sup.request_stop("the agent could not start")
        supervisor.join()
        if isinstance(exc, OSError):
            log.error("cannot listen", extra={"ip": cfg.ip, "port": cfg.agent_port, "error": str(exc)})
            return 3
        raise
    http = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    http.start()
    log.info("agent listening", extra={"ip": cfg.ip, "port": cfg.agent_port, "desktop": cfg.desktop})
    if args.notify_fd is not None:
        notify(args.notify_fd)
    try:
        supervisor.join()
    finally:
        server.shutdown()
        server.server_close()
    if failed:
        return 1
    log.info("agent stopped")
    return 0


def leave(code: int) -> NoReturn:
    """Exit without the interpreter's teardown: the exit handlers (a running CLI must not outlive the agent) and the
    log's flush run, but not the module teardown and the collection of every object — ~20 ms of CPU per agent, which
    a node draining 1,000 sandboxes at once pays in full on its few cores."""
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
