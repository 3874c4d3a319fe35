"""The sign-in flow of a session with a provider:

ready → (agent starts the provider's CLI in a PTY with the flow of the session's mode, captures the OAuth URL) →
awaiting_user → (the user signs in; the CLI writes its credentials; the agent pushes them) → credentials_captured
(sealed in the vault) → delivered (installed in the user's CLI sandbox through its agent) → completed; the sign-in
sandbox is then destroyed. Or failed | expired, with the reason. The agent calls the controller; the controller never
polls it — except to forward a code the person pasted (direct mode, paste_code flow).

remote_browser: the agent opens the URL in the sandbox's Chromium. direct: the agent pushes a `signin_prompt` (URL,
device code, whether it waits for a pasted code, the CLI's message) that the API and the viewer page show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hearth.agentlink.client import AgentClient, AgentRefused
from hearth.clisandbox.manager import CliSandboxes
from hearth.errors import HearthError, Hop
from hearth.log import bind_session
from hearth.providers.model import Provider
from hearth.session.reach import cli_unreachable, network_hop, page_unreachable
from hearth.session.states import IllegalTransition, Status
from hearth.session.view import SessionView
from hearth.signin import wording
from hearth.signin.codes import SessionCodes
from hearth.signin.modes import SigninMode
from hearth.signin.ports import Records, Sessions
from hearth.signin.prompts import SigninPrompt
from hearth.vault.store import CredentialFile, Vault
from hearth_agent.contract import routes
from hearth_agent.contract.signin import CodeRefused, check_code, login_body
from hearth_agent.homefs import MAX_FILE as MAX_CREDENTIAL_FILE

log = logging.getLogger("hearth.signin")
HANDOVER_WAIT = 60.0  # seconds a sign-in waits for the node holding the CLI sandbox to install its credentials
HANDOVER_POLL = 0.5  # seconds between looks at the vault meanwhile


class SignInFlow:
    def __init__(
        self,
        service: Sessions,
        records: Records,
        vault: Vault,
        clis: CliSandboxes,
        providers: dict[str, Provider],
        codes: SessionCodes,
    ) -> None:
        """`service`: ends sessions and runs the deliveries; `records`: the sessions' rows. `codes`: the codes of each
        sign-in, remembered here, scrubbed from every reason and event detail by the session records (the same
        object, passed to both)."""
        self.service = service
        self.records = records
        self.vault = vault
        self.clis = clis
        self.providers = providers
        self.codes = codes
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._prompts: dict[str, SigninPrompt] = {}  # memory only: holds the full sign-in URL
        self._sent_with: dict[str, str] = {}  # the link shown when the person's last code was sent

    # ---- CallbackHandler (agent → controller) ---------------------------------------------------
    def adopting(self) -> bool:
        return self.service.adopting

    def secret_for(self, session_id: str) -> str | None:
        return self.service.secret_of(session_id)

    async def on_event(self, session_id: str, event: str, detail: str) -> str | None:
        with bind_session(session_id):
            view = await self.records.get(session_id)
            if view.status.terminal:
                return f"session is {view.status.value}: no more events"
            await self.records.note(session_id, f"agent:{event}", detail)
            if event == "url_captured":
                with contextlib.suppress(IllegalTransition):
                    await self.records.advance(session_id, Status.AWAITING_USER, detail)
            elif event == "login_failed":
                hop = network_hop(detail)  # the CLI could not reach its provider: name that hop, not the agent
                reason = cli_unreachable(hop, detail) if hop else f"[agent] sign-in failed: {detail}"
                await self.service.end(session_id, Status.FAILED, reason, hop or Hop.AGENT)
            elif event == "page_unreachable":
                hop, reason = page_unreachable(detail)
                await self.service.end(session_id, Status.FAILED, reason, hop)
            return None

    async def on_signin(self, session_id: str, prompt: SigninPrompt) -> None:
        """The agent's `signin_prompt`: what the person must see changed. Events name the step, never the URL."""
        with bind_session(session_id):
            view = await self.records.get(session_id)
            if view.status.terminal:
                return
            before = self._prompts.get(session_id)
            self.codes.remember(session_id, prompt.user_code)  # shown to the person; never written
            hop = network_hop(prompt.message) if prompt.message else None
            if hop is not None and prompt.message:  # not a refused code: the CLI cannot reach its provider
                await self.service.end(session_id, Status.FAILED, cli_unreachable(hop, prompt.message), hop)
                return
            prompt = self._refusal(session_id, prompt)
            self._prompts[session_id] = prompt
            if before is None or before.url != prompt.url:
                await self.records.note(session_id, "sign-in link shown", f"{prompt.flow} flow")
            if prompt.detail and (before is None or before.detail != prompt.detail):
                await self.records.note(session_id, "code refused", f"the CLI said: {prompt.detail}")
            if prompt.renewed and (before is None or not before.renewed or before.url != prompt.url):
                await self.records.note(session_id, "sign-in link renewed", "a new sign-in link is ready")
            if before is not None and before.awaiting_code is False and prompt.awaiting_code and prompt.detail:
                await self.records.note(session_id, "code asked again", "the CLI did not accept the code")
            if view.status is Status.READY:
                with contextlib.suppress(IllegalTransition):
                    await self.records.advance(session_id, Status.AWAITING_USER, "sign-in link shown")
            self.records.changes.notify(session_id)

    def _refusal(self, session_id: str, prompt: SigninPrompt) -> SigninPrompt:
        """The agent's `message` is the CLI's refusal of the person's code: the person reads plain words (and
        whether the link was renewed — Claude Code and Gemini CLI start a new sign-in), the CLI's own in `detail`."""
        if not prompt.message:
            return prompt
        sent_with = self._sent_with.get(session_id, prompt.url)
        renewed = prompt.url != sent_with
        return replace(prompt, message=wording.refused_code(renewed), detail=prompt.message, renewed=renewed)

    def prompt(self, session_id: str) -> SigninPrompt | None:
        return self._prompts.get(session_id)

    async def submit_code(self, session_id: str, code: object) -> None:
        """Forward a pasted code to the agent (which types it into the CLI). Bad codes are refused before sending."""
        text = check_code(code)  # CodeRefused(400, the fix): the agent checks it the same way again
        view = await self.records.get(session_id)
        prompt = self._prompts.get(session_id)
        if view.status.terminal:
            raise CodeRefused(409, f"the session is {view.status.value}; start a new sign-in")
        if view.mode is not SigninMode.DIRECT or prompt is None or prompt.flow != "paste_code":
            raise CodeRefused(409, "this sign-in does not take a pasted code")
        if not prompt.awaiting_code:
            raise CodeRefused(409, "the CLI is not waiting for a code (yet); wait for the page to ask for it")
        agent = self._agent(view)
        self.codes.remember(session_id, text)  # the person's: never in a reason, event or log
        with bind_session(session_id):
            try:
                await agent.call("POST", routes.LOGIN_CODE, {"code": text})
            except AgentRefused as exc:
                if exc.status in (400, 409):
                    raise CodeRefused(exc.status, exc.detail) from None
                raise
            # The agent pushes a new prompt (awaiting_code again with the CLI's error, or nothing while it works).
            self._prompts[session_id] = SigninPrompt(prompt.flow, prompt.url, prompt.user_code, False, None)
            self._sent_with[session_id] = prompt.url  # a refusal that comes with another link renewed it
            await self.records.note(session_id, "code submitted")

    def _agent(self, view: SessionView) -> AgentClient:
        s = self.service.settings
        secret = self.service.secret_of(view.id)
        if view.sandbox_ip is None or secret is None:
            raise CodeRefused(409, "the sign-in sandbox is not running")
        return AgentClient(s.dial_netns, view.sandbox_ip, s.agent_port, secret)

    async def on_credentials(self, session_id: str, provider: str, files: list[CredentialFile]) -> str | None:
        """Seal and store the pushed credentials — only while the session expects them (ready/awaiting_user), and
        in the same transaction as the step to credentials_captured, so a push the session refuses (ended, kept
        failed, already captured) or one that fails validation never replaces the user's stored record."""
        with bind_session(session_id):
            view = await self.records.get(session_id)
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
                    await self.records.advance(session_id, Status.AWAITING_USER, "credentials arrived")
                store = self.vault.upsert(view.user_id, provider, files, session_id)
                await self.records.advance(
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
        agent = self._agent(view)
        env: dict[str, Any] = {"HEARTH_EXAMPLE_ISSUER": s.example_issuer} if s.example_issuer else {}
        # the one sign-in timeout: the agent gives up on the CLI when this controller expires the session; a page
        # opened in the sandbox's browser is probed (unreachable fails within seconds)
        flow = provider.flow_for(view.mode)
        body = login_body(provider.agent_document(), flow, s.oauth_flow_timeout, env, probe_page=True)
        with bind_session(view.id):
            try:
                await agent.call("POST", routes.LOGIN, body)
            except HearthError as exc:
                await self.service.end(view.id, Status.FAILED, exc.reason, exc.hop)

    async def resume(self, view: SessionView) -> None:
        """A sign-in whose sandbox this (restarted) controller adopted: its flow timeout runs on from the session's
        start, and the agent pushes its current prompt again (the link and code a direct-mode person must see)."""
        if not view.provider or view.status.terminal:
            return
        s = self.service.settings
        elapsed = (datetime.now(UTC) - _aware(view.created_at)).total_seconds()
        self._timers[view.id] = asyncio.create_task(self._timeout(view.id, max(0.0, s.oauth_flow_timeout - elapsed)))
        with bind_session(view.id), contextlib.suppress(HearthError, CodeRefused):
            await self._agent(view).call("POST", routes.LOGIN_REPLAY, {})

    async def _deliver(self, view: SessionView, provider: str) -> None:
        with bind_session(view.id):
            try:
                files = await self.vault.open(view.user_id, provider)
                if files is None:
                    raise HearthError(Hop.DRIVER, "credentials vanished from the vault (revoked?)", "sign in again")
                home = await self.clis.home_node(view.user_id)
                if home is None or home == self.service.settings.node_id:
                    installed = await self.clis.deliver(view.user_id, files)
                    await self.vault.mark_delivered(view.user_id, provider)
                else:  # placed here although the CLI sandbox lives there (its node was full or down)
                    installed = await self._handed_over(view.user_id, provider, home)
                await self.records.advance(view.id, Status.DELIVERED, ", ".join(installed))
                await self.service.end(
                    view.id, Status.COMPLETED, f"credentials installed in the CLI sandbox: {', '.join(installed)}"
                )
            except IllegalTransition:
                return
            except HearthError as exc:
                await self.service.end(
                    view.id, Status.FAILED, f"delivery to the CLI sandbox failed: {exc.reason}", exc.hop
                )

    async def _handed_over(self, user_id: str, provider: str, node_id: str) -> list[str]:
        """Wait (bounded) until node `node_id` installed the sealed credentials in the user's CLI sandbox there
        (CliSandboxes.install_handed_over); returns the installed targets."""
        deadline = asyncio.get_running_loop().time() + HANDOVER_WAIT
        while True:
            meta = next((m for m in await self.vault.list(user_id) if m.provider == provider), None)
            if meta is None:
                raise HearthError(Hop.DRIVER, "credentials vanished from the vault (revoked?)", "sign in again")
            if meta.delivered_at is not None:
                return [f"{path} (on node {node_id})" for path in meta.files]
            if asyncio.get_running_loop().time() >= deadline:
                raise HearthError(
                    Hop.NODE,
                    f"node {node_id}, where this user's CLI sandbox lives, did not install the credentials within "
                    f"{HANDOVER_WAIT:.0f}s",
                    f"they stay sealed in the vault and node {node_id} installs them once it is up (hearth node list)",
                )
            await asyncio.sleep(HANDOVER_POLL)

    async def _timeout(self, session_id: str, after: float) -> None:
        await asyncio.sleep(after)
        await self.service.end(
            session_id, Status.EXPIRED, f"sign-in not completed within OAUTH_FLOW_TIMEOUT={after:.0f}s"
        )

    async def ended(self, view: SessionView) -> None:
        """The session ended: its prompt, sent link, codes and flow timeout go."""
        self._prompts.pop(view.id, None)
        self._sent_with.pop(view.id, None)
        self.codes.forget(view.id)
        timer = self._timers.pop(view.id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
