"""The sign-in flow of a session with a provider:

ready → (agent starts the provider's CLI in a PTY, captures the OAuth URL, opens it in Chromium) → awaiting_user →
(the user signs in; the CLI writes its credentials; the agent pushes them) → credentials_captured (sealed in the
vault) → delivered (installed in the user's CLI sandbox through its agent) → completed; the browser sandbox is then
destroyed. Or failed | expired, with the reason. The agent calls the controller; the controller never polls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hearth.agentlink.client import AgentClient
from hearth.clisandbox.manager import CliSandboxes
from hearth.errors import HearthError, Hop
from hearth.log import bind_session
from hearth.providers.model import Provider
from hearth.session.service import SessionService, SessionView
from hearth.session.states import IllegalTransition, Status
from hearth.vault.store import CredentialFile, Vault
from hearth_agent.homefs import MAX_FILE as MAX_CREDENTIAL_FILE

log = logging.getLogger("hearth.signin")


class SignInFlow:
    def __init__(
        self, service: SessionService, vault: Vault, clis: CliSandboxes, providers: dict[str, Provider]
    ) -> None:
        self.service = service
        self.vault = vault
        self.clis = clis
        self.providers = providers
        self._timers: dict[str, asyncio.Task[None]] = {}
        service.on_ready.append(self.begin)
        service.on_terminal.append(self._ended)

    # ---- CallbackHandler (agent → controller) ---------------------------------------------------
    def secret_for(self, session_id: str) -> str | None:
        return self.service.secret_of(session_id)

    async def on_event(self, session_id: str, event: str, detail: str) -> str | None:
        with bind_session(session_id):
            view = await self.service.get(session_id)
            if view.status.terminal:
                return f"session is {view.status.value}: no more events"
            await self.service.note(session_id, f"agent:{event}", detail)
            if event == "url_captured":
                with contextlib.suppress(IllegalTransition):
                    await self.service.advance(session_id, Status.AWAITING_USER, detail)
            elif event == "login_failed":
                await self.service.end(session_id, Status.FAILED, f"[agent] sign-in failed: {detail}", Hop.AGENT)
            return None

    async def on_credentials(self, session_id: str, provider: str, files: list[CredentialFile]) -> str | None:
        """Seal and store the pushed credentials — only while the session expects them (ready/awaiting_user), and
        in the same transaction as the step to credentials_captured, so a push the session refuses (ended, kept
        failed, already captured) or one that fails validation never replaces the user's stored record."""
        with bind_session(session_id):
            view = await self.service.get(session_id)
            if view.status not in (Status.READY, Status.AWAITING_USER):
                log.warning("credential push refused", extra={"status": view.status.value})
                return f"session is {view.status.value}: credentials are not expected"
            expected = self.providers.get(view.provider or "")
            if expected is None or provider != expected.name:
                wrong = f"[agent] credentials for {provider!r}, session is for {view.provider!r}"
                await self.service.end(session_id, Status.FAILED, wrong, Hop.AGENT)
                return wrong
            allowed = {f.target: f.mode for f in expected.credential_files}
            files = [CredentialFile(f.path, allowed[f.path], f.data) for f in files if f.path in allowed]
            reason: str | None = None
            if len(files) != len(allowed):
                reason = "[agent] pushed credential files do not match the provider definition"
            elif any(len(f.data) > MAX_CREDENTIAL_FILE for f in files):
                reason = f"[agent] a pushed credential file exceeds {MAX_CREDENTIAL_FILE} bytes (the CLI sandbox limit)"
            if reason is not None:
                await self.service.end(session_id, Status.FAILED, reason, Hop.AGENT)
                return reason
            try:
                if view.status is Status.READY:
                    await self.service.advance(session_id, Status.AWAITING_USER, "credentials arrived")
                store = self.vault.upsert(view.user_id, provider, files, session_id)
                await self.service.advance(
                    session_id, Status.CREDENTIALS_CAPTURED, f"{len(files)} file(s) sealed", also=store
                )
            except IllegalTransition:
                return "the session ended meanwhile; credentials not stored"
            self.service.spawn(self._deliver(view, provider), f"deliver-{session_id}")
            return None

    # ---- flow ---------------------------------------------------------------------------------
    async def begin(self, view: SessionView) -> None:
        """Called when a session becomes ready: start the provider's login inside the browser sandbox."""
        if not view.provider:
            return
        provider = self.providers[view.provider]
        s = self.service.settings
        self._timers[view.id] = asyncio.create_task(self._timeout(view.id, s.oauth_flow_timeout))
        assert view.sandbox_ip is not None
        secret = self.service.secret_of(view.id)
        assert secret is not None
        agent = AgentClient(s.fabric_netns, view.sandbox_ip, s.agent_port, secret)
        env: dict[str, Any] = {"HEARTH_EXAMPLE_ISSUER": s.example_issuer} if s.example_issuer else {}
        with bind_session(view.id):
            try:
                await agent.call("POST", "/v1/login", {"provider": provider.model_dump(), "env": env})
            except HearthError as exc:
                await self.service.end(view.id, Status.FAILED, exc.reason, exc.hop)

    async def _deliver(self, view: SessionView, provider: str) -> None:
        with bind_session(view.id):
            try:
                files = await self.vault.open(view.user_id, provider)
                if files is None:
                    raise HearthError(Hop.DRIVER, "credentials vanished from the vault (revoked?)", "sign in again")
                installed = await self.clis.deliver(view.user_id, files)
                await self.vault.mark_delivered(view.user_id, provider)
                await self.service.advance(view.id, Status.DELIVERED, ", ".join(installed))
                await self.service.end(
                    view.id, Status.COMPLETED, f"credentials installed in the CLI sandbox: {', '.join(installed)}"
                )
            except IllegalTransition:
                return
            except HearthError as exc:
                await self.service.end(
                    view.id, Status.FAILED, f"delivery to the CLI sandbox failed: {exc.reason}", exc.hop
                )

    async def _timeout(self, session_id: str, after: float) -> None:
        await asyncio.sleep(after)
        await self.service.end(
            session_id, Status.EXPIRED, f"sign-in not completed within OAUTH_FLOW_TIMEOUT={after:.0f}s"
        )

    async def _ended(self, view: SessionView) -> None:
        timer = self._timers.pop(view.id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
