"""The only controller endpoint sandboxes can reach: agent → controller callbacks, served on BRIDGE_IP inside the
fabric namespace (the public API stays on its own address in the root namespace, out of the sandboxes' reach).

`POST /agent/v1/sessions/{id}/events`, `…/credentials`, `…/prompt` (a CLI sandbox's prompt events: hearth/prompts)
and `…/signin` (what the person must see to sign in in their
own browser: the full URL, so it is kept in memory by the handler and never logged), each authenticated by that
sandbox's own secret (checked from the headers, before any body is read). Served by hearth/agentlink/httpd.py, which
bounds what any one sandbox can cost. Per session at most MAX_EVENTS events and MAX_EVENT_BYTES of event text are
accepted (then 409); the handler refuses pushes the session is not in a state to expect (409). Bodies must be
JSON objects of plain JSON: NaN/Infinity → 422.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from hearth.agentlink.httpd import BoundedServer, HttpRefusal, Limits, Request, Response
from hearth.agentlink.httpd import serve as serve_http
from hearth.config import Settings
from hearth.fabric.dial import socket_in_netns
from hearth.signin.prompts import PromptError, SigninPrompt, parse_prompt
from hearth.vault.store import CredentialFile
from hearth_agent.contract import routes

log = logging.getLogger("hearth.agentlink")
MAX_EVENTS = 200  # per session
MAX_EVENT_BYTES = 64 * 1024  # per session: event names + details as stored
_ROUTE = re.compile(rf"{re.escape(routes.PUSH_PREFIX)}/([^/?#]{{1,128}})/({'|'.join(routes.PUSH_KINDS)})")


class CallbackHandler(Protocol):
    def secret_for(self, session_id: str) -> str | None: ...

    def adopting(self) -> bool:
        """True while a restarted controller has not yet adopted the sandboxes that outlived the previous one: an
        unknown session is then answered 503 (the agent retries) instead of 404."""

    async def on_event(self, session_id: str, event: str, detail: str) -> str | None:
        """None when taken, else why it was refused."""

    async def on_credentials(self, session_id: str, provider: str, files: list[CredentialFile]) -> str | None:
        """None when taken, else why it was refused."""

    async def on_signin(self, session_id: str, prompt: SigninPrompt) -> None: ...


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object; NaN, Infinity and -Infinity are refused (HttpRefusal 422), as is anything not an object."""
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except ValueError as exc:
        raise HttpRefusal(422, f"body must be a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise HttpRefusal(422, "body must be a JSON object")
    return data


@dataclass
class _Budget:
    events: int = 0
    size: int = 0
    spent: bool = False


class PromptHandler(Protocol):
    async def on_prompt(self, owner: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A CLI sandbox's batch of prompt events (hearth/prompts/service.py); (HTTP status, body)."""


class CallbackApp:
    def __init__(self, handler: CallbackHandler, prompts: PromptHandler | None = None) -> None:
        self.handler = handler
        self.prompts = prompts
        self._budgets: dict[str, _Budget] = {}

    async def __call__(self, request: Request) -> Response:
        m = _ROUTE.fullmatch(request.path)
        if m is None:
            return 404, {"error": "not found"}
        if request.method != "POST":
            return 405, {"error": "POST only"}
        sid, kind = m[1], m[2]
        secret = self.handler.secret_for(sid)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if secret is None:
            self._budgets.pop(sid, None)
            if self.handler.adopting():
                return 503, {"error": "the controller is adopting its sandboxes after a restart; retry"}
            return 404, {"error": "unknown or ended session"}
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), secret.encode()):
            log.warning("agent callback with a wrong secret refused", extra={"session_id": sid})
            raise HttpRefusal(401, "wrong agent secret")
        data = parse_json_object(await request.body())
        if kind == "prompt":  # bounded per prompt by the prompt service itself, not by the sign-in event budget
            if self.prompts is None:
                return 404, {"error": "prompts are not served here"}
            return await self.prompts.on_prompt(sid, data)
        if kind == "events":
            return await self._event(sid, data)
        if kind == "signin":
            return await self._signin(sid, data)
        return await self._credentials(sid, data)

    async def _signin(self, sid: str, data: dict[str, Any]) -> Response:
        try:
            prompt = parse_prompt(data)
        except PromptError as exc:
            return 400, {"error": str(exc)}
        await self.handler.on_signin(sid, prompt)
        return 200, {"ok": True}

    async def _event(self, sid: str, data: dict[str, Any]) -> Response:
        event, detail = str(data.get("event", ""))[:64], str(data.get("detail", ""))[:500]
        if sid not in self._budgets and len(self._budgets) >= 1024:  # forget sessions that have ended
            for gone in [k for k in self._budgets if self.handler.secret_for(k) is None]:
                del self._budgets[gone]
        budget = self._budgets.setdefault(sid, _Budget())
        size = len(event.encode()) + len(detail.encode())
        if budget.spent or budget.events >= MAX_EVENTS or budget.size + size > MAX_EVENT_BYTES:
            if not budget.spent:
                log.warning("agent event budget exhausted", extra={"session_id": sid, "events": budget.events})
                budget.spent = True
            return 409, {"error": f"event budget of this session exhausted ({MAX_EVENTS} events, {MAX_EVENT_BYTES} B)"}
        budget.events += 1
        budget.size += size
        refused = await self.handler.on_event(sid, event, detail)
        return (409, {"error": refused}) if refused else (200, {"ok": True})

    async def _credentials(self, sid: str, data: dict[str, Any]) -> Response:
        try:
            files = [
                CredentialFile(str(f["target"]), int(f["mode"]), base64.b64decode(str(f["data_b64"]), validate=True))
                for f in data["files"]
            ]
        except (KeyError, TypeError, ValueError, binascii.Error):
            return 400, {"error": "files must be [{target, mode, data_b64}]"}
        if not files:
            return 400, {"error": "no files"}
        refused = await self.handler.on_credentials(sid, str(data.get("provider", "")), files)
        return (409, {"error": refused}) if refused else (200, {"ok": True})


def listening_socket(settings: Settings) -> socket.socket:
    """A listening TCP socket on BRIDGE_IP:HEARTH_CALLBACK_PORT inside the fabric namespace."""
    sock = socket_in_netns(settings.dial_netns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(settings.bridge_ip), settings.callback_port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    settings: Settings, handler: CallbackHandler, limits: Limits | None = None, prompts: PromptHandler | None = None
) -> BoundedServer:
    sock = await asyncio.to_thread(listening_socket, settings)
    try:
        return await serve_http(sock, CallbackApp(handler, prompts), limits or Limits())
    except BaseException:
        sock.close()
        raise
