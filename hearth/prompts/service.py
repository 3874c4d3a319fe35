"""Running a prompt: queued → starting (the user's CLI sandbox started or resumed, the newest credential delivered)
→ running (the agent runs the CLI: hearth_agent/promptrun.py) → completed | failed | cancelled | timed_out.

The agent pushes event batches to the callback endpoint (`…/sessions/{cli owner}/prompt`); only the sandbox that
runs a prompt may push for it. Batches are checked, bounded (the stored answer never exceeds
HEARTH_PROMPT_MAX_ANSWER_BYTES: beyond it one truncation marker), sealed and stored, then every stream listening is
woken. The final batch ends the prompt; rewritten credential files in it are re-sealed as a new version unless a
newer one (a sign-in meanwhile) exists, which is then delivered instead: the newest wins.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from hearth.agentlink.client import AgentClient, AgentRefused
from hearth.clisandbox.manager import CliSandboxes, Elsewhere
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.prompts.fanout import Changes
from hearth.prompts.intake import Live, bound
from hearth.prompts.states import PromptStatus, Step
from hearth.prompts.store import PromptStore, Refused
from hearth.providers.model import Provider
from hearth.store.models import PromptRow
from hearth.vault.store import CredentialFile, Vault
from hearth_agent.homefs import MAX_FILE as MAX_CREDENTIAL_FILE

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
                await client.call("POST", "/v1/prompts", body, timeout=30.0)
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
        if sb is None:
            return None
        spec = sb.spec
        return AgentClient(self.s.fabric_netns, str(spec.slot.ip), self.s.agent_port, spec.secret)

    async def _agent_cancel(self, pid: str) -> None:
        live = self._live.get(pid)
        client = self._client(live.owner) if live and live.owner else None
        if client is not None:
            with contextlib.suppress(HearthError):
                await client.call("POST", "/v1/prompts/cancel", {"id": pid}, timeout=10.0)

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
        pid = str(data.get("prompt_id", ""))
        if not self.adopted:
            return 503, {"error": "the controller is adopting its prompts after a restart; retry"}
        live = self._live.get(pid)
        row = await self.store.get(pid) if live is not None else None
        if live is None or row is None or live.owner != owner:
            return 404, {"error": "no such prompt running in this sandbox"}
        if PromptStatus(row.status).terminal:
            return 409, {"error": f"the prompt is {row.status}"}
        events, raw = data.get("events") or [], data.get("raw") or []
        if not isinstance(events, list) or not isinstance(raw, list):
            return 400, {"error": "events and raw must be lists"}
        kept = bound(row, live, events, self.s.prompt_max_answer_bytes)
        raw_kept = [str(r)[:65536] for r in raw if isinstance(r, str)][:1000]
        fields: dict[str, Any] = {}
        usage = [e["usage"] for e in kept if e["type"] == "usage"]
        if usage:
            fields["usage"] = {**(row.usage or {}), **usage[-1]}
        timing = "first_output" if any(e["type"] in ("text", "tool") for e in kept) else None
        final = data.get("final")
        if isinstance(final, dict):
            conv, model = final.get("conversation_id"), final.get("model")
            if isinstance(conv, str) and conv:
                fields["conversation_id"] = conv[:200]
            if isinstance(model, str) and model:
                fields["model"] = model[:200]
        fields["answer_bytes"] = len(live.answer.encode())
        fields["truncated"] = bool(row.truncated or any(e.get("truncated") for e in kept))
        if isinstance(final, dict) and final.get("truncated") is True:
            fields["truncated"] = True  # the agent bounded it first
        if kept or raw_kept or fields:
            row = await self.store.append(row, kept, raw_kept, timing=timing, **fields)
        self.changes.notify(pid)
        if isinstance(final, dict):
            await self._final(row, live, final, data.get("credentials"))
        elif data.get("credentials") is not None:  # rewritten during the run: a refresh while it answers
            await self._credentials(row, live, data.get("credentials"))
        return 200, {"ok": True}

    async def _final(self, row: PromptRow, live: Live, final: dict[str, Any], creds: Any) -> None:
        status = final.get("status")
        step = final.get("step")
        reason = final.get("reason")
        code = final.get("exit_code")
        try:
            st = PromptStatus(str(status))
        except ValueError:
            st = PromptStatus.FAILED
        if not st.terminal:
            st = PromptStatus.FAILED
        stp = Step(step) if step in {s.value for s in Step} else (None if st is PromptStatus.COMPLETED else Step.CLI)
        needs = final.get("needs_signin")
        await self._credentials(row, live, creds)
        if isinstance(needs, str) and needs:
            await self.vault.set_status(row.user_id, row.provider, live.base_version, "needs_signin", needs[:300])
        else:
            await self.vault.set_status(row.user_id, row.provider, -1, "active", None)  # last_used only
        await self._end(
            row.id, st, stp, str(reason)[:2000] if isinstance(reason, str) else None,
            exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        )  # fmt: skip
        assert live.final is not None
        live.final.set()
        await self.clis.touch(row.user_id)

    async def _credentials(self, row: PromptRow, live: Live, creds: Any) -> None:
        """Rewritten credential files from the CLI: a new version — or, when a newer one was sealed meanwhile,
        that newer one delivered over them (the newest wins)."""
        if (
            not isinstance(creds, dict)
            or creds.get("provider") != row.provider
            or not isinstance(creds.get("files"), list)
        ):
            return
        provider = self.providers[row.provider]
        allowed = {f.target for f in provider.credential_files}
        try:
            files = [
                CredentialFile(
                    str(f["target"]), int(f["mode"]) & 0o777, base64.b64decode(str(f["data_b64"]), validate=True)
                )
                for f in creds["files"]
            ]
        except (KeyError, TypeError, ValueError, binascii.Error):
            log.warning("refreshed credentials malformed; ignored", extra={"prompt_id": row.id})
            return
        if {f.path for f in files} != allowed or any(len(f.data) > MAX_CREDENTIAL_FILE for f in files):
            log.warning("refreshed credentials are not the provider's files; ignored", extra={"prompt_id": row.id})
            return
        meta = await self.vault.refreshed(row.user_id, row.provider, files, live.base_version)
        if meta is not None:
            live.base_version = meta.version  # the sandbox holds this one now
            log.info(
                "credentials refreshed by the CLI: re-sealed", extra={"prompt_id": row.id, "version": meta.version}
            )
            return
        opened = await self.vault.open_versioned(row.user_id, row.provider)
        if opened is not None:  # a newer sign-in: it goes back over what the CLI wrote
            with contextlib.suppress(HearthError):
                await self.clis.deliver(row.user_id, opened[0], row.provider, version=opened[1].version)

    # ---- restart and housekeeping ---------------------------------------------------------------
    async def adopt(self) -> int:
        """After a controller restart: every active prompt of this node is attached again (a running one keeps
        running in its sandbox: the agent retries its pushes) or started again (queued, starting)."""
        n = 0
        for row in await self.store.active_on_node():
            if row.id in self._tasks:
                continue
            attach = row.status == PromptStatus.RUNNING.value
            live = self._live.setdefault(row.id, Live(final=asyncio.Event()))
            if attach:
                cli = await self.clis.get(row.user_id)
                owner = await self.clis.owner_of(row.user_id)
                if cli is None or owner is None or self.clis.sandboxes.get(owner) is None:
                    await self._end(
                        row.id,
                        PromptStatus.FAILED,
                        Step.SANDBOX,
                        "[sandbox] the CLI sandbox did not survive the controller restart",
                    )
                    continue
                live.owner = owner
                client = self._client(owner)
                state = "unknown"
                with contextlib.suppress(HearthError):
                    out = await client.call("POST", "/v1/prompts/status", {"id": row.id}) if client else None
                    state = str(out.get("state")) if isinstance(out, dict) else "unknown"
                if state == "unknown":
                    await self._end(
                        row.id,
                        PromptStatus.FAILED,
                        Step.SANDBOX,
                        "[sandbox] the CLI sandbox no longer runs this prompt (it restarted)",
                    )
                    continue
                meta = next((m for m in await self.vault.list(row.user_id) if m.provider == row.provider), None)
                live.base_version = meta.version if meta else 0
            elif row.status == PromptStatus.STARTING.value:
                await self.store.transition(row.id, PromptStatus.FAILED, step=Step.CONTROLLER.value,
                    reason="[controller] the controller restarted while the CLI sandbox started; send the prompt again")  # fmt: skip
                self.changes.notify(row.id)
                continue
            self._start(row.id, row.user_id, attach)
            n += 1
        self.adopted = True  # from here on a push for an unknown prompt is refused, not deferred
        return n

    async def check_sandboxes(self) -> None:
        """Running prompts whose CLI sandbox died: failed, naming the sandbox (housekeeping calls it)."""
        for pid, live in list(self._live.items()):
            if not live.owner or live.final is None or live.final.is_set():
                continue
            if self.clis.sandboxes.get(live.owner) is not None and await self.clis.sandboxes.alive(live.owner):
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
