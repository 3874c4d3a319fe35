"""CLI sign-ins inside the sandbox, and installing delivered credentials.

Routes (all need `Authorization: Bearer <agent secret>`):

- `POST /v1/login` `{"provider": <provider definition>, "flow": "loopback"|"paste_code"|"device_code", "timeout": <s>,
  "env": {...}}` (hearth_agent/contract/signin.py: login_body; the sign-in fails after `timeout` seconds) → 202 `{"started": true}`; 409 while one runs; 400 for a flow the definition does not declare (naming the ones
  it has); 424 when the CLI is not installed (naming the fix). Runs the flow's CLI in a PTY (hearth_agent/loginrun.py).
- `GET /v1/login` → `{"state", "provider", "flow", "url_host", "reason", "prompts_answered", "awaiting_code",
  "screen_tail"}` (rendered screen text, redacted; never a secret).
- `POST /v1/login/code` `{"code"}` → 200 `{"sent": true}`: types the code + Enter into a paste_code CLI that waits
  for it; 409 when nothing waits for a code; 400 for an empty code, control characters or > 512 characters.
- `POST /v1/cancel-login` → `{"cancelled": bool, "state"}`.
- `POST /v1/files` `{"files": [{"target", "mode", "data_b64"}]}` → `{"installed": [targets]}` (CLI sandbox).
- `POST /v1/files/digest` `{"targets"}` → `{"files": [{target, size, mode, sha256}], "absent"}` (never contents).

Pushed to the controller: events `login_started` | `url_captured` (scheme://host/path only) | `code_submitted` |
`credentials_found` (targets) | `login_failed` (reason, redacted); `signin` `{"flow", "url", "user_code",
"awaiting_code", "message"}` whenever what the person must see changes (the only place the full URL goes); and the
credentials `{"provider", "files": [{target, mode, data_b64}]}`.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from hearth_agent import egress, filedigest, homefs
from hearth_agent.config import AgentConfig, Identity, identity_of
from hearth_agent.contract import routes
from hearth_agent.contract.signin import CodeRefused, login_timeout
from hearth_agent.controller import Outbox
from hearth_agent.loginrun import SPOOL, LoginRun
from hearth_agent.pathfind import which
from hearth_agent.providerdef import FlowDef, ProviderDef, UnknownFlow, definition_digest, parse_provider, str_map
from hearth_agent.record import replace
from hearth_agent.server import AgentServer
from hearth_agent.supervisor import Supervisor

log = logging.getLogger("hearth_agent")

DEFAULT_HOOK = "/opt/hearth/hearth_agent/browser_hook.py"
CLIS_BIN = "/opt/hearth-clis/node_modules/.bin"  # the pinned provider CLIs (hearth/guest/clis.py GUEST_CLIS)
HOOK_DIR = ".hearth/bin"  # first on the CLI's PATH: `xdg-open` → the browser hook
__all__ = ["SPOOL", "LoginRun", "SignIn", "register"]

Config = AgentConfig | Mapping[str, Any]
_EXTRA_ENV = re.compile(r"HEARTH_[A-Z0-9_]{1,64}")
# A CI marker in the environment turns interactive CLIs headless (Gemini CLI then exits 41 "Please set an Auth
# method" instead of showing its sign-in menu): a login is a person at a terminal, never a CI job.
_CI_MARKERS = frozenset(
    {
        "CI",
        "CONTINUOUS_INTEGRATION",
        "BUILD_NUMBER",
        "BUILD_ID",
        "RUN_ID",
        "GITHUB_ACTIONS",
        "GITLAB_CI",
        "BUILDKITE",
        "TF_BUILD",
        "TEAMCITY_VERSION",
        "JENKINS_URL",
        "CIRCLECI",
    }
)


def _is_ci_marker(key: str) -> bool:
    return key in _CI_MARKERS or key.startswith("CI_")


def setting(cfg: Config, key: str) -> str:
    value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
    return value if isinstance(value, str) else ""


class SignIn:
    def __init__(
        self,
        sup: Supervisor,
        cfg: Config,
        home: str | None = None,
        hook: str | None = None,
        identity: Callable[[], Identity] | None = None,
    ) -> None:
        """`identity`: who the agent is now (the server's, which the pool's hand-over replaces); without it, the
        config's."""
        self.sup, self.cfg = sup, cfg
        self.identity = identity or (lambda: identity_of(cfg))
        self.home = home or sup.home
        self.hook = hook or os.environ.get("BROWSER") or DEFAULT_HOOK
        self.clis_bin = os.environ.get("HEARTH_CLIS_BIN") or CLIS_BIN
        self._lock = threading.Lock()
        self._run: LoginRun | None = None
        self._outbox: Outbox | None = None
        self._outbox_for: tuple[str, ...] = ()

    def outbox(self) -> Outbox:
        who = self.identity()
        key = (setting(self.cfg, "callback"), who.session_id, who.secret)
        if self._outbox is None or key != self._outbox_for:
            cb, sid, secret = key
            if not (cb and sid and secret):
                raise ValueError("this agent has no controller callback (config callback, session_id)")
            self._outbox, self._outbox_for = Outbox(cb, sid, secret), key
        return self._outbox

    def _hook_dir(self) -> str:
        """~/.hearth/bin/xdg-open → the browser hook (CLIs that open URLs with xdg-open, e.g. Gemini CLI)."""
        d = os.path.join(self.home, HOOK_DIR)
        os.makedirs(d, mode=0o700, exist_ok=True)
        link = os.path.join(d, "xdg-open")
        if os.path.islink(link) and os.readlink(link) != self.hook:
            os.unlink(link)
        if not os.path.lexists(link):
            os.symlink(self.hook, link)
        return d

    def child_env(self, flow: FlowDef, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _is_ci_marker(k)}
        env.setdefault("TERM", "xterm-256color")
        env.pop("DISPLAY", None)
        env.update(egress.child_env())  # the local egress proxy, the extra CAs (hearth_agent/egress.py)
        env.update(flow.env)
        env.update(extra)
        path = [self._hook_dir()]
        if os.path.isdir(self.clis_bin):  # first: its pinned `node` runs the CLIs, not an older system one
            path.append(self.clis_bin)
        env["PATH"] = ":".join([*path, *env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":")])
        env["HOME"], env["BROWSER"] = self.home, flow.env.get("BROWSER", self.hook)
        display = getattr(self.sup, "display", "")
        if flow.display and display:
            env["DISPLAY"] = display
        return env

    def missing_cli(self, p: ProviderDef, flow: FlowDef, env: dict[str, str]) -> str | None:
        exe = flow.command[0]
        if which(exe, path=env.get("PATH")) is not None:
            return None
        if p.cli_bin is not None:
            return f"{exe} is not installed in this image; run `hearth image build` (or scripts/setup.sh for the netns driver)"
        return f"{exe!r} is not installed in this sandbox (not found on PATH)"

    def login(self, body: dict[str, Any]) -> tuple[int, Any]:
        allowed = self.identity().providers  # set by the controller for every sandbox; None: a test's own agent
        extra = str_map(body.get("env"), "env")
        if allowed is not None:
            if definition_digest(body.get("provider")) not in allowed:
                return 403, {"error": "this provider definition is not one the controller allowed for this sandbox"}
            if any(not _EXTRA_ENV.fullmatch(k) for k in extra):
                return 400, {"error": "env may only name HEARTH_* variables"}
        try:
            timeout = login_timeout(body)  # the one sign-in timeout: the controller's (hearth_agent/contract/signin.py)
        except ValueError as exc:
            return 400, {"error": str(exc)}
        p = replace(parse_provider(body.get("provider")), timeout=timeout)
        flow_name = body.get("flow")
        if flow_name is not None and not isinstance(flow_name, str):
            return 400, {"error": "flow must be loopback, paste_code or device_code"}
        try:
            flow = p.flow(flow_name)
        except UnknownFlow as exc:
            return 400, {"error": str(exc)}
        env = self.child_env(flow, extra)
        outbox = self.outbox()
        missing = self.missing_cli(p, flow, env)
        if missing is not None:
            log.warning(missing, extra={"provider": p.name})
            return 424, {"error": missing}
        opener = self.sup.open_url if flow.name == "loopback" else None
        with self._lock:
            if self._run is not None and self._run.active:
                return 409, {"error": "a login is already running", "provider": self._run.p.name}
            run = LoginRun(p, flow, env, self.home, opener, outbox, probe_page=body.get("probe_page") is True)
            try:
                run.start()
            except OSError as exc:
                return 500, {"error": f"could not start {flow.command[0]}: {exc.strerror or type(exc).__name__}"}
            self._run = run
        return 202, {"started": True}

    def status(self, _body: dict[str, Any]) -> tuple[int, Any]:
        run = self._run
        if run is None:
            return 200, {
                "state": "idle",
                "provider": None,
                "flow": None,
                "url_host": None,
                "reason": None,
                "prompts_answered": 0,
                "awaiting_code": False,
                "screen_tail": "",
            }
        return 200, run.status()

    def replay(self, _body: dict[str, Any]) -> tuple[int, Any]:
        """Push the current sign-in prompt to the controller again (it was restarted and adopted this sandbox)."""
        run = self._run
        return 200, {"replayed": run.repush() if run is not None else False}

    def code(self, body: dict[str, Any]) -> tuple[int, Any]:
        run = self._run
        try:
            if run is None:
                raise CodeRefused(409, "no sign-in is running")
            run.submit_code(body.get("code"))
        except CodeRefused as exc:
            return exc.status, {"error": str(exc)}
        return 200, {"sent": True}

    def cancel(self, _body: dict[str, Any]) -> tuple[int, Any]:
        run = self._run
        if run is None or not run.active:
            return 200, {"cancelled": False, "state": "idle" if run is None else run.state}
        run.cancel()
        log.info("login cancelled", extra={"provider": run.p.name})
        return 200, {"cancelled": True, "state": run.state}

    def files(self, body: dict[str, Any]) -> tuple[int, Any]:
        files = homefs.parse_files(body.get("files"))
        try:
            installed = homefs.install(self.home, files)
        except OSError as exc:
            return 500, {"error": f"could not install the files: {exc.strerror or type(exc).__name__}"}
        log.info(f"installed {', '.join(installed)}")
        return 200, {"installed": installed}

    def remove_files(self, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            removed, absent = homefs.remove(self.home, body.get("targets"))
        except OSError as exc:
            return 500, {"error": f"could not remove the files: {exc.strerror or type(exc).__name__}"}
        if removed:
            log.info(f"removed {', '.join(removed)}")
        return 200, {"removed": removed, "absent": absent}

    def shutdown(self) -> None:
        run = self._run
        if run is not None and run.active:
            run.cancel()


def register(server: AgentServer, sup: Supervisor, cfg: Config) -> SignIn:
    signin = SignIn(sup, cfg, identity=lambda: server.identity)
    server.route("POST", routes.LOGIN, signin.login)
    server.route("GET", routes.LOGIN, signin.status)
    server.route("POST", routes.LOGIN_CODE, signin.code)
    server.route("POST", routes.LOGIN_REPLAY, signin.replay)
    server.route("POST", routes.CANCEL_LOGIN, signin.cancel)
    server.route("POST", routes.FILES, signin.files)
    server.route("POST", routes.FILES_REMOVE, signin.remove_files)
    server.route("POST", routes.FILES_DIGEST, filedigest.route(signin.home))  # sizes, modes, SHA-256 only
    atexit.register(signin.shutdown)  # a running CLI (its own session) must not outlive the agent
    return signin
