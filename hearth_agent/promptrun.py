"""Prompts in the user's CLI sandbox: the agent's prompt routes (docs/prompts.md). Each run is a `Run`
(hearth_agent/promptproc.py: the CLI process, its output mapped to hearth events and pushed to the controller).

Routes (agent secret): `POST /v1/prompts` (start), `POST /v1/prompts/cancel` {id}, `POST /v1/prompts/status` {id}.
Only the provider definitions the controller allowed for this sandbox run (their digests, config `providers`), at
most MAX_RUNS at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hearth_agent.config import AgentConfig, Identity, identity_of
from hearth_agent.contract import routes
from hearth_agent.controller import Outbox
from hearth_agent.proctree import descendants, kill_tree
from hearth_agent.promptdef import PromptSpec
from hearth_agent.providerdef import definition_digest, parse_provider
from hearth_agent.server import AgentServer, HttpError
from hearth_agent.supervisor import Supervisor

if TYPE_CHECKING:  # imported at the first prompt: ≈0.5 MiB of every agent's memory otherwise (a sign-in runs none)
    from hearth_agent.promptproc import Run

log = logging.getLogger("hearth_agent")
__all__ = ["Prompts", "Run", "descendants", "kill_tree", "register"]
CLIS_BIN = "/opt/hearth-clis/node_modules/.bin"
MAX_RUNS = 16


def __getattr__(name: str) -> Any:
    """`promptrun.Run` (bench/prompts.py patches it) without importing it at the agent's start."""
    if name == "Run":
        from hearth_agent.promptproc import Run

        return Run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Prompts:
    def __init__(
        self, cfg: AgentConfig | Mapping[str, Any], home: str, identity: Callable[[], Identity] | None = None
    ) -> None:
        """`identity`: who the agent is now (the server's, which the pool's hand-over replaces); without it, the
        config's."""
        self.cfg, self.home = cfg, home
        self.identity = identity or (lambda: identity_of(cfg))
        self.clis_bin = os.environ.get("HEARTH_CLIS_BIN") or CLIS_BIN
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def _outbox(self) -> Outbox:
        cb = self.cfg.get("callback") if isinstance(self.cfg, Mapping) else self.cfg.callback
        who = self.identity()
        if not (isinstance(cb, str) and cb and who.session_id and who.secret):
            raise HttpError(409, "this agent has no controller callback (config callback, session_id)")
        return Outbox(cb, who.session_id, who.secret)

    def env(self, spec: PromptSpec) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_AGENT")}
        path = [self.clis_bin] if os.path.isdir(self.clis_bin) else []
        env["PATH"] = ":".join([*path, *env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":")])
        env.update(spec.env)
        env["HOME"] = self.home
        env.pop("DISPLAY", None)
        return env

    def start(self, body: dict[str, Any]) -> tuple[int, Any]:
        if not self.identity().allows(definition_digest(body.get("provider"))):
            return 403, {"error": "this provider definition is not one the controller allowed for this sandbox"}
        p = parse_provider(body.get("provider"))
        if p.prompt is None:
            return 400, {"error": f"{p.name} cannot answer prompts (its definition has no prompt section)"}
        rid, prompt = body.get("id"), body.get("prompt")
        if not isinstance(rid, str) or not 1 <= len(rid) <= 64 or not isinstance(prompt, str):
            return 400, {"error": "id (≤ 64 characters) and prompt (a string) are required"}
        model, conv = body.get("model"), body.get("conversation_id")
        for name, v in (("model", model), ("conversation_id", conv)):
            if v is not None and (not isinstance(v, str) or not v or len(v) > 200 or v.startswith("-") or "\x00" in v):
                return 400, {"error": f"{name} must be a short string not starting with '-'"}
        if p.prompt.input == "argument" and "\x00" in prompt:
            return 400, {"error": f"{p.name} takes the prompt as an argument, which cannot hold NUL characters"}
        argv = p.prompt.argv(prompt, str(body.get("permissions", "read_only")), model, conv)
        timeout, cap = body.get("timeout", 600), body.get("max_answer_bytes", 1 << 20)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in (timeout, cap)):
            return 400, {"error": "timeout and max_answer_bytes must be positive numbers"}
        env = self.env(p.prompt)
        cwd = os.path.join(self.home, p.prompt.workspace)
        os.makedirs(cwd, mode=0o700, exist_ok=True)
        from hearth_agent.promptproc import Run

        run = Run(
            rid, p, p.prompt, argv, prompt.encode() if p.prompt.input == "stdin" else None,
            float(timeout), int(cap), body.get("raw") is True, self._outbox(), self.home,
        )  # fmt: skip
        with self._lock:
            if rid in self._runs:
                return 409, {"error": "a prompt with this id exists", "state": self._runs[rid].state}
            if sum(r.state != "exited" for r in self._runs.values()) >= MAX_RUNS:
                return 429, {"error": f"this sandbox already runs {MAX_RUNS} prompts"}
            try:
                run.start(env, cwd)
            except OSError as exc:
                return 424, {"error": f"could not start {argv[0]}: {exc.strerror or type(exc).__name__}"}
            self._runs[rid] = run
            for old in [k for k, r in self._runs.items() if r.state == "exited"][:-64]:
                del self._runs[old]
        log.info("prompt started", extra={"prompt_id": rid, "provider": p.name, "cli": argv[0]})
        return 202, {"started": True}

    def cancel(self, body: dict[str, Any]) -> tuple[int, Any]:
        run = self._runs.get(str(body.get("id")))
        if run is None:
            return 200, {"cancelled": False, "state": "unknown"}
        return 200, {"cancelled": run.cancel(), "state": run.state}

    def status(self, body: dict[str, Any]) -> tuple[int, Any]:
        run = self._runs.get(str(body.get("id")))
        if run is None:
            return 200, {"state": "unknown"}
        return 200, {"state": run.state, "exit_code": run.exit_code, "sent": run.sent, "seq": run.seq}

    def shutdown(self) -> None:
        for run in list(self._runs.values()):
            run.cancel()


def register(server: AgentServer, sup: Supervisor, cfg: AgentConfig) -> Prompts:
    prompts = Prompts(cfg, sup.home, lambda: server.identity)
    server.route("POST", routes.PROMPTS, prompts.start)
    server.route("POST", routes.PROMPTS_CANCEL, prompts.cancel)
    server.route("POST", routes.PROMPTS_STATUS, prompts.status)
    atexit.register(prompts.shutdown)  # a CLI must not outlive the agent
    return prompts
