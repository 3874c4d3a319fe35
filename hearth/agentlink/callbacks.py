"""The only controller endpoint sandboxes can reach: agent → controller callbacks, served on BRIDGE_IP inside the
fabric namespace (the public API stays on its own address in the root namespace, out of the sandboxes' reach).

`POST /agent/v1/sessions/{id}/events`, `…/credentials` and `…/signin` (what the person must see to sign in in their
own browser: the full URL, so it is kept in memory by the handler and never logged), each authenticated by that
sandbox's own secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import socket
from collections.abc import Iterator
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hearth.config import Settings
from hearth.fabric.dial import socket_in_netns
from hearth.session.prompts import PromptError, SigninPrompt, parse_prompt
from hearth.vault.store import CredentialFile

log = logging.getLogger("hearth.agentlink")
MAX_BODY = 1 << 20


class CallbackHandler(Protocol):
    def secret_for(self, session_id: str) -> str | None: ...

    async def on_event(self, session_id: str, event: str, detail: str) -> None: ...

    async def on_credentials(self, session_id: str, provider: str, files: list[CredentialFile]) -> None: ...

    async def on_signin(self, session_id: str, prompt: SigninPrompt) -> None: ...


def make_app(handler: CallbackHandler) -> Starlette:
    async def authorized(request: Request) -> tuple[str, dict[str, Any]] | JSONResponse:
        sid = str(request.path_params["session_id"])
        secret = handler.secret_for(sid)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if secret is None:
            return JSONResponse({"error": "unknown or ended session"}, status_code=404)
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), secret.encode()):
            log.warning("agent callback with a wrong secret refused", extra={"session_id": sid})
            return JSONResponse({"error": "wrong agent secret"}, status_code=401)
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return JSONResponse({"error": "body too large"}, status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError
        except ValueError:
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        return sid, data

    async def events(request: Request) -> JSONResponse:
        got = await authorized(request)
        if isinstance(got, JSONResponse):
            return got
        sid, data = got
        await handler.on_event(sid, str(data.get("event", ""))[:64], str(data.get("detail", ""))[:500])
        return JSONResponse({"ok": True})

    async def credentials(request: Request) -> JSONResponse:
        got = await authorized(request)
        if isinstance(got, JSONResponse):
            return got
        sid, data = got
        try:
            files = [
                CredentialFile(str(f["target"]), int(f["mode"]), base64.b64decode(str(f["data_b64"]), validate=True))
                for f in data["files"]
            ]
        except (KeyError, TypeError, ValueError, binascii.Error):
            return JSONResponse({"error": "files must be [{target, mode, data_b64}]"}, status_code=400)
        if not files:
            return JSONResponse({"error": "no files"}, status_code=400)
        await handler.on_credentials(sid, str(data.get("provider", "")), files)
        return JSONResponse({"ok": True})

    async def signin(request: Request) -> JSONResponse:
        got = await authorized(request)
        if isinstance(got, JSONResponse):
            return got
        sid, data = got
        try:
            prompt = parse_prompt(data)
        except PromptError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        await handler.on_signin(sid, prompt)
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/agent/v1/sessions/{session_id}/signin", signin, methods=["POST"]),
            Route("/agent/v1/sessions/{session_id}/events", events, methods=["POST"]),
            Route("/agent/v1/sessions/{session_id}/credentials", credentials, methods=["POST"]),
        ]
    )


def listening_socket(settings: Settings) -> socket.socket:
    """A listening TCP socket on BRIDGE_IP:HEARTH_CALLBACK_PORT inside the fabric namespace."""
    sock = socket_in_netns(settings.fabric_netns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(settings.bridge_ip), settings.callback_port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _EmbeddedServer(uvicorn.Server):
    """Runs beside the main API server in the same process: the main server owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, handler: CallbackHandler) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    sock = await asyncio.to_thread(listening_socket, settings)
    config = uvicorn.Config(
        make_app(handler),
        log_config=None,
        access_log=False,
        timeout_keep_alive=5,
        limit_concurrency=200,
        lifespan="off",
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="agent-callbacks")
    return server, task
