"""Running a prompt: queued → starting (the user's CLI sandbox started or resumed, the newest credential delivered)
→ running (the agent runs the CLI: hearth_agent/promptrun.py) → completed | failed | cancelled | timed_out.

Admission, the run of each prompt (its task: the CLI sandbox, the credential, the agent's start, the deadline) and
cancel live here; the batches the agent pushes are taken in by hearth/prompts/callback.py, the prompts that outlived
a previous controller by hearth/prompts/recovery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from hearth.agentlink.client import AgentClient, AgentRefused
from hearth.clisandbox.manager import CliSandboxes, Elsewhere
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.prompts import callback, recovery
from hearth.prompts.fanout import Changes
from hearth.prompts.intake import Live
from hearth.prompts.states import PromptStatus, Step
from hearth.prompts.store import PromptStore, Refused
from hearth.providers.model import Provider
from hearth.store.models import PromptRow
from hearth.vault.store import Vault
from hearth_agent.contract import routes

log = logging.getLogger("hearth.prompts")
GRACE = 30.0  # s beyond the prompt's timeout before the controller gives up on the agent's final batch


class PromptRefused(Exception):
    """A prompt not admitted: HTTP `status`, the reason in the person's words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PromptRequest:
    provider: str
    prompt: str
    model: str | None = None
    conversation_id: str | None = None
    permissions: str = "read_only"
    timeout: float | None = None


class PromptService:
    def __init__(
        self,
        settings: Settings,
        store: PromptStore,
        vault: Vault,
        clis: CliSandboxes,
        providers: dict[str, Provider],
    ) -> None:
        self.s, self.store, self.vault, self.clis, self.providers = settings, store, vault, clis, providers
        self.changes = Changes()
        self._live: dict[str, Live] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._users: dict[str, str] = {}  # prompt id → user, while its task runs
        self.adopted = False  # the prompts that outlived a previous controller are attached (adopt)
        clis.busy = self.busy  # an idle stop never stops a CLI sandbox that runs a prompt

    def busy(self, user_id: str) -> bool:
        """A prompt of this user runs here: its CLI sandbox is not idle."""
        return user_id in self._users.values()

    # ---- admission ----------------------------------------------------------------------------
    async def submit(self, user_id: str, req: PromptRequest) -> PromptRow:
        p = self.providers.get(req.provider)
        if p is None:
            raise PromptRefused(400, f"unknown provider {req.provider!r}; known: {', '.join(sorted(self.providers))}")
        if p.prompt is None:
            raise PromptRefused(400, f"{p.display_name} cannot answer prompts through hearth (no prompt definition)")
        if not req.prompt.strip():
            raise PromptRefused(400, "the prompt is empty")
        size = len(req.prompt.encode("utf-8", errors="surrogatepass"))
        if size > self.s.max_prompt_bytes:
            raise PromptRefused(
                413, f"the prompt is {size} bytes; at most {self.s.max_prompt_bytes} (HEARTH_MAX_PROMPT_BYTES)"
            )
        if p.prompt.input == "argument" and "\x00" in req.prompt:
            raise PromptRefused(
                400, f"{p.display_name} takes the prompt as an argument, which cannot hold NUL characters"
            )
        timeout = min(req.timeout or self.s.prompt_timeout, self.s.prompt_timeout)
        if req.conversation_id is not None and not await self.store.conversation_known(
            user_id, req.provider, req.conversation_id
        ):
            raise PromptRefused(
                400,
                f"unknown conversation {req.conversation_id!r} for {req.provider} (none of this user's finished prompts)",
            )
        meta = next((m for m in await self.vault.list(user_id) if m.provider == req.provider), None)
        if meta is None:
            raise PromptRefused(
                409,
                f"user {user_id} has no {p.display_name} sign-in; start one: POST /api/auth/start "
                f'{{"user_id": "{user_id}", "provider": "{req.provider}"}}',
            )
        if meta.status == "needs_signin":
            raise PromptRefused(
                409,
                f"the {p.display_name} sign-in of user {user_id} needs renewing ({meta.status_reason or 'refused'}); "
                f"start a new sign-in with provider {req.provider}",
            )
        home = await self.clis.home_node(user_id)
        if home is not None and home != self.s.node_id:
            raise Elsewhere(home)
        pid = str(uuid.uuid4())
        try:
            row = await self.store.admit(
                pid, user_id, req.provider, req.prompt, permissions=req.permissions, model=req.model,
                resumed_from=req.conversation_id, timeout=timeout,
            )  # fmt: skip
        except Refused as exc:
            raise PromptRefused(exc.status, str(exc)) from None
        self._start(pid, user_id)
        log.info("prompt queued", extra={"prompt_id": pid, "user": user_id, "provider": req.provider})
        return row

    def _start(self, pid: str, user_id: str, attach: bool = False) -> None:
        self._users[pid] = user_id
        self._live.setdefault(pid, Live(final=asyncio.Event()))
        task = asyncio.create_task(self._run(pid, attach), name=f"prompt-{pid}")
        self._tasks[pid] = task
        task.add_done_callback(lambda _t: self._forget(pid))

    def _forget(self, pid: str) -> None:
        self._tasks.pop(pid, None)
        self._live.pop(pid, None)
        self._users.pop(pid, None)
        self._cancelled.discard(pid)

    # ---- the run ------------------------------------------------------------------------------
    async def _end(self, pid: str, status: PromptStatus, step: Step | None, reason: str | None, **f: Any) -> None:
        before = await self.store.get(pid)
        answer = await self._answer(before) if before is not None else ""
        sealed = (before.user_id, answer) if before is not None and answer else None
        row = await self.store.transition(
            pid, status, answer=sealed, step=step.value if step else None, reason=reason, **f
        )
        if row is not None:
            log.info("prompt ended", extra={"prompt_id": pid, "status": status.value, "step": step})
        self.changes.notify(pid)

    async def _answer(self, row: PromptRow) -> str:
        """The final answer: the CLI's own (done), else the text streamed — from the stored events, so a prompt
        that began under a previous controller has its whole answer too (all of it is bounded already)."""
        done, text = None, []
        for chunk in await self.store.chunks(row, 0, None):
            for e in chunk.items:
                if e.get("type") == "text":
                    text.append(str(e.get("text", "")))
                elif e.get("type") == "done" and isinstance(e.get("text"), str) and e["text"]:
                    done = e["text"]
        return done if done is not None and not row.truncated else "".join(text)

    async def _run(self, pid: str, attach: bool) -> None:
        try:
            await self._drive(pid, attach)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("prompt run failed", extra={"prompt_id": pid})
            why = exc.reason if isinstance(exc, HearthError) else type(exc).__name__
            with contextlib.suppress(Exception):
                await self._end(pid, PromptStatus.FAILED, Step.CONTROLLER, f"[controller] {why}")

    async def _drive(self, pid: str, attach: bool) -> None:
        row = await self.store.get(pid)
        if row is None:
            return
        live = self._live[pid]
        assert live.final is not None
        provider = self.providers[row.provider]
        if not attach:
            if await self.store.transition(pid, PromptStatus.STARTING) is None:
                return  # cancelled while queued
            self.changes.notify(pid)
            try:
                cli = await self.clis.ensure(row.user_id)
            except HearthError as exc:
                return await self._end(pid, PromptStatus.FAILED, Step.SANDBOX, f"[sandbox] {exc.reason}")
            live.owner = cli.owner_id
            await self.store.append(row, [], [], timing="sandbox_ready")
            if pid in self._cancelled:
                return await self._end(pid, PromptStatus.CANCELLED, None, "cancelled while the CLI sandbox started")
            opened = await self.vault.open_versioned(row.user_id, row.provider)
            if opened is None:
                return await self._end(
                    pid, PromptStatus.FAILED, Step.CREDENTIALS, "[credentials] the sign-in was revoked"
                )
            files, meta = opened
            live.base_version = meta.version
            try:
                await self.clis.deliver(row.user_id, files, row.provider, version=meta.version)
            except HearthError as exc:
                return await self._end(
                    pid, PromptStatus.FAILED, Step.CREDENTIALS, f"[credentials] not installed: {exc.reason}"
                )
            client = self._client(cli.owner_id)
            if client is None:
                return await self._end(pid, PromptStatus.FAILED, Step.SANDBOX, "[sandbox] the CLI sandbox stopped")
            body = {
                "id": pid,
                "provider": provider.agent_document(),
                "prompt": self.store.prompt_text(row) or "",
                "permissions": row.permissions,
                "model": row.model,
                "conversation_id": row.resumed_from,
                "timeout": row.timeout,
                "max_answer_bytes": self.s.prompt_max_answer_bytes,
                "raw": True,
            }
            body = {k: v for k, v in body.items() if v is not None}
            if pid in self._cancelled:
                return await self._end(pid, PromptStatus.CANCELLED, None, "cancelled while the CLI sandbox started")
            try:
                await client.call("POST", routes.PROMPTS, body, timeout=30.0)
            except AgentRefused as exc:
                step = Step.CLI if exc.status == 424 else Step.SANDBOX
                return await self._end(pid, PromptStatus.FAILED, step, f"[{step.value}] {exc.detail}")
            except HearthError as exc:
                return await self._end(pid, PromptStatus.FAILED, Step.SANDBOX, f"[sandbox] {exc.reason}")
            await self.store.transition(pid, PromptStatus.RUNNING, timing="started")
            self.changes.notify(pid)
            if pid in self._cancelled:
                await self._agent_cancel(pid)
        try:
            await asyncio.wait_for(live.final.wait(), row.timeout + GRACE)
        except TimeoutError:
            await self._agent_cancel(pid)
            await self._end(
                pid, PromptStatus.TIMED_OUT, Step.TIMEOUT,
                f"[timeout] no end from the CLI sandbox within {row.timeout:g} s; last output: {live.answer[-300:]!r}",
            )  # fmt: skip

    def _client(self, owner: str) -> AgentClient | None:
        sb = self.clis.sandboxes.get(owner)
        return sb.agent() if sb is not None else None

    async def _agent_cancel(self, pid: str) -> None:
        live = self._live.get(pid)
        client = self._client(live.owner) if live and live.owner else None
        if client is not None:
            with contextlib.suppress(HearthError):
                await client.call("POST", routes.PROMPTS_CANCEL, {"id": pid}, timeout=10.0)

    async def cancel(self, pid: str) -> PromptRow | None:
        """Idempotent: a queued prompt ends at once; a starting one before the CLI starts; a running one when the
        agent has ended its whole process tree (its final batch)."""
        row = await self.store.get(pid)
        if row is None or PromptStatus(row.status).terminal:
            return row
        self._cancelled.add(pid)
        if row.status == PromptStatus.QUEUED.value:
            await self._end(pid, PromptStatus.CANCELLED, None, "cancelled")
        elif row.status == PromptStatus.RUNNING.value:
            await self._agent_cancel(pid)
        return await self.store.get(pid)

    # ---- agent → controller -------------------------------------------------------------------
    async def on_prompt(self, owner: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A batch the CLI sandbox's agent pushed (hearth/prompts/callback.py)."""
        return await callback.on_prompt(self, owner, data)

    # ---- restart and housekeeping ---------------------------------------------------------------
    async def adopt(self) -> int:
        """After a controller restart: every active prompt of this node attached again or started again
        (hearth/prompts/recovery.py)."""
        return await recovery.adopt(self)

    async def check_sandboxes(self) -> None:
        """Running prompts whose CLI sandbox died: failed, naming the sandbox (housekeeping calls it)."""
        for pid, live in list(self._live.items()):
            if not live.owner or live.final is None or live.final.is_set():
                continue
            sb = self.clis.sandboxes.get(live.owner)
            if sb is not None and await sb.alive():
                continue
            await self._end(
                pid, PromptStatus.FAILED, Step.SANDBOX, "[sandbox] the CLI sandbox stopped while the prompt ran"
            )
            live.final.set()

    async def close(self) -> None:
        for t in list(self._tasks.values()):
            t.cancel()
        for t in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
