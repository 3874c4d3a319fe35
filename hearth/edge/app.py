"""The edge application: stateless (everything it knows is in the shared store), any number of replicas.

- `POST /api/auth/start`: placement (`hearth.cluster.placement`), then the chosen node's own API creates the session
  (its admission — limits, lease, insert under the admission lock — is the final word: a node that filled up in the
  meantime answers 503 and the edge places again without it).
- `/api/auth/session/{id}/…`: forwarded to the node holding the session (the status stream too); a down node is a
  502 whose reason names it. The viewer WebSocket is relayed frame by frame (`wsrelay`): close 4502 names the node.
- `/api/users/{id}/…`, `/api/auth/credentials/{id}/…`: the node of the user's CLI sandbox (else any up node);
  `/api/prompts/{id}/…`: the node that runs the prompt (SSE relayed as it comes; the WebSocket stream too: `promptws`).
- `/api/nodes`: the cluster as the store sees it. `/health`, `/ready`: the edge's own checks (the store answers).

With HEARTH_NODE_CREDENTIAL set, the edge checks the caller's API key itself and forwards the request without it,
carrying the node credential instead (hearth/cluster/credential.py); unset, it forwards the caller's API key. Nodes
serving TLS (https:// addresses) are verified against HEARTH_NODE_CA. Viewer traffic carries the viewer token, which
every node checks against the shared key ring (HEARTH_TOKEN_SECRET).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from hearth import __version__
from hearth.api import limits
from hearth.api import webhooks as webhook_routes
from hearth.api.auth import ApiKeys
from hearth.api.schemas import SessionOut
from hearth.api.viewer import STATIC
from hearth.cluster.beat import run_sweeper
from hearth.cluster.credential import HEADER as EDGE_HEADER
from hearth.cluster.credential import NodeCredential, node_tls
from hearth.cluster.nodes import NodeView, list_nodes
from hearth.cluster.placement import NoNode, place
from hearth.config import Settings
from hearth.edge.promptws import UNAUTHORISED, relay_prompt, upstream_headers
from hearth.edge.routing import (
    NodeDown,
    NodeSilent,
    Unknown,
    route_prompt,
    route_session,
    route_user,
    stored_session,
)
from hearth.edge.wsrelay import relay_viewer
from hearth.errors import HearthError, StoreError
from hearth.gateway.routes import UNKNOWN, close_reason
from hearth.log import bind_session
from hearth.session.view import SessionView
from hearth.store.db import Database

log = logging.getLogger("hearth.edge")
PLACE_ATTEMPTS = 3
RESPONSIVE = 2.0  # a node whose answer takes longer is asked for /health on a fresh connection
PROBE_TIMEOUT = 1.0  # ...and answered for (503 naming it) when that does not come back within this
HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}


def create_edge_app(settings: Settings, db: Database | None = None) -> FastAPI:
    store = db or Database(settings.db_url)
    keys = ApiKeys(settings.api_keys)
    credential = NodeCredential.from_setting(settings.node_credential)
    if credential is None:
        log.warning(
            "HEARTH_NODE_CREDENTIAL is not set: this edge forwards callers' API keys to the nodes; set the same "
            "key ring on every node and edge (docs: Many hosts, edge → node)"
        )
    tls = node_tls(settings)
    http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=RESPONSIVE), follow_redirects=False, verify=tls)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(run_sweeper(settings, store), name="node-sweeper")
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await http.aclose()
            store.dispose()

    app = FastAPI(title="hearth edge", version=__version__, lifespan=lifespan)
    app.state.store = store
    # Per-client body size and rate limits live here, where clients connect (nodes see only the edges: in a cluster
    # they run with HEARTH_RATE_LIMIT=0).
    limits.install(app, settings)

    @app.exception_handler(HearthError)
    async def hearth_error(_r: Request, exc: HearthError) -> JSONResponse:
        code = 503 if isinstance(exc, StoreError | NoNode | NodeSilent) else 502
        body = {"error": exc.reason, "hop": exc.hop.value, "hint": exc.hint}
        return JSONResponse(body, status_code=code, headers={"Retry-After": "5"} if code == 503 else None)

    @app.exception_handler(Unknown)
    async def unknown(_r: Request, exc: Unknown) -> JSONResponse:
        return JSONResponse({"error": f"session {exc} not found"}, status_code=404)

    def public_base(request: Request) -> str:
        return settings.public_url.rstrip("/") if settings.public_url else str(request.base_url).rstrip("/")

    async def forward(request: Request, node: NodeView, path: str, body: bytes | None = None) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS | {EDGE_HEADER}}
        headers["x-forwarded-for"] = request.client.host if request.client else ""
        if credential is not None and "authorization" in request.headers:
            await keys(request)  # 401 here for a wrong key; a right one is not passed on: the node credential is
            del headers["authorization"]
            headers[EDGE_HEADER] = credential.present(request.method, path)
        url = httpx.URL(node.address.rstrip("/") + path, query=request.url.query.encode())
        req = http.build_request(
            request.method, url, headers=headers, content=body if body is not None else await request.body()
        )
        sending = asyncio.ensure_future(http.send(req, stream=True))
        try:
            try:
                resp = await asyncio.wait_for(asyncio.shield(sending), RESPONSIVE)
            except TimeoutError:
                if not await responsive(node):  # a slow answer is waited for; a silent node is answered for now
                    raise NodeSilent(node.id, RESPONSIVE + PROBE_TIMEOUT) from None
                resp = await sending
        except httpx.ConnectTimeout as exc:
            raise NodeSilent(node.id, RESPONSIVE) from exc
        except httpx.HTTPError as exc:
            raise NodeDown(node.id, f"did not answer ({type(exc).__name__})") from exc
        finally:
            if not sending.done():
                sending.cancel()
        out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS | {"content-encoding"}}
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(_chunks(resp), status_code=resp.status_code, headers=out)
        try:
            content = await resp.aread()
        finally:
            await resp.aclose()
        return Response(content, status_code=resp.status_code, headers=out)

    async def responsive(node: NodeView) -> bool:
        """Whether the node answers /health within PROBE_TIMEOUT on a connection of its own."""
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, verify=tls) as probe:
            try:
                return (await probe.get(node.address.rstrip("/") + "/health")).status_code == 200
            except httpx.HTTPError:
                return False

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return {"ok": True, "role": "edge", "version": __version__}

    @app.get("/ready", tags=["health"])
    async def ready() -> JSONResponse:
        try:
            nodes = await store.run(list_nodes)
        except StoreError as exc:
            return JSONResponse({"ok": False, "detail": {"store": exc.reason}}, 503, headers={"Retry-After": "5"})
        up = sum(1 for n in nodes if n.state.value == "up")
        return JSONResponse({"ok": True, "detail": {"store": "ok", "nodes_up": str(up)}})

    # webhook deliveries: the outbox is in the shared store, so the edge answers from it (every node sends)
    app.include_router(webhook_routes.make_router(store, keys, bool(settings.webhook_url)))

    @app.get("/api/nodes", tags=["cluster"], dependencies=[Depends(keys)])
    async def nodes_list() -> list[dict[str, Any]]:
        return [
            {
                "id": n.id,
                "address": n.address,
                "state": n.state.value,
                "capacity": n.capacity,
                "free_slots": n.free_slots,
                "active": n.active,
                "drivers": list(n.drivers),
                "version": n.version,
                "reason": n.reason,
                "heartbeat_at": n.heartbeat_at.isoformat(),
            }
            for n in await store.run(list_nodes)
        ]

    @app.post("/api/auth/start", tags=["sessions"], dependencies=[Depends(keys)])
    async def start(request: Request) -> Response:
        body = await request.body()
        try:
            user = str((await request.json()).get("user_id", ""))
        except (ValueError, AttributeError):
            user = ""  # the node answers the malformed body with its own 422
        refused: set[str] = set()
        for _ in range(PLACE_ATTEMPTS):
            node = await store.run(lambda s: place(s, user, frozenset(refused)))
            try:
                resp = await forward(request, node, "/api/auth/start", body)
            except (NodeDown, NodeSilent):  # unreachable or silent: place again without it
                refused.add(node.id)
                continue
            if resp.status_code == 503 and "[store]" not in bytes(resp.body).decode(errors="replace"):
                refused.add(node.id)  # full since placement read it (or shutting down): place again
                continue
            return _rewrite(resp, node.address, public_base(request))
        await store.run(lambda s: place(s, user))  # every node full by now: ClusterFull ("cluster full: N on M")
        raise NoNode([f"{n} refused just now" for n in sorted(refused)])

    async def session_route(request: Request, session_id: str, rest: str = "") -> Response:
        try:
            node = await store.run(lambda s: route_session(s, session_id))
        except NodeDown:
            if request.method != "GET" or rest:
                raise
            # a down node's session reads as the store has it — failed, naming the node — without waiting for it
            await keys(request)  # the node would have checked the API key
            row = await store.run(lambda s: stored_session(s, session_id))
            if row is None:
                raise
            return JSONResponse(SessionOut.of(SessionView.of(row)).model_dump(mode="json"))
        resp = await forward(request, node, f"/api/auth/session/{session_id}{rest}")
        return _rewrite(resp, node.address, public_base(request))

    methods = ["GET", "POST", "DELETE"]

    @app.api_route("/api/auth/session/{session_id}", methods=methods, tags=["sessions"])
    async def session(request: Request, session_id: str) -> Response:
        return await session_route(request, session_id)

    @app.api_route("/api/auth/session/{session_id}/{rest:path}", methods=methods, tags=["sessions"])
    async def session_sub(request: Request, session_id: str, rest: str) -> Response:
        return await session_route(request, session_id, "/" + rest)

    @app.api_route("/api/users/{user_id}/{rest:path}", methods=methods, tags=["users"])
    async def users(request: Request, user_id: str, rest: str) -> Response:
        node = await store.run(lambda s: route_user(s, user_id))
        return await forward(request, node, f"/api/users/{user_id}/{rest}")

    @app.api_route("/api/prompts/{prompt_id}", methods=methods, tags=["prompts"])
    @app.api_route("/api/prompts/{prompt_id}/{rest:path}", methods=methods, tags=["prompts"])
    async def prompts(request: Request, prompt_id: str, rest: str = "") -> Response:
        """A prompt runs on its user's CLI sandbox's home node (the SSE stream is relayed as it comes)."""
        node = await store.run(lambda s: route_prompt(s, prompt_id))
        return await forward(request, node, f"/api/prompts/{prompt_id}" + (f"/{rest}" if rest else ""))

    @app.websocket("/api/prompts/{prompt_id}/stream")
    async def prompt_stream_ws(ws: WebSocket, prompt_id: str) -> None:
        """The prompt's WebSocket stream, relayed from the node that runs it (hearth/edge/promptws.py)."""
        path = f"/api/prompts/{prompt_id}/stream"
        try:
            headers = upstream_headers(ws, keys, credential, path)
        except PermissionError as exc:
            await ws.close(UNAUTHORISED, str(exc))
            return
        try:
            node = await store.run(lambda s: route_prompt(s, prompt_id))
        except Unknown:
            await ws.close(UNKNOWN, "unknown prompt")
            return
        except HearthError as exc:
            await ws.accept()
            await ws.close(4503 if isinstance(exc, StoreError) else 4502, close_reason(exc.reason))
            return

        async def why_down() -> str | None:
            with contextlib.suppress(HearthError, Unknown):
                await store.run(lambda s: route_prompt(s, prompt_id))
                return None
            view = next((n for n in await store.run(list_nodes) if n.id == node.id), None)
            return (view.reason or "").removeprefix(f"[node] node {node.id} ") or None if view else None

        await relay_prompt(ws, node.id, node.address, prompt_id, headers, why_down, tls)

    @app.api_route("/api/auth/credentials/{user_id}", methods=methods, tags=["users"])
    @app.api_route("/api/auth/credentials/{user_id}/{rest:path}", methods=methods, tags=["users"])
    async def credentials(request: Request, user_id: str, rest: str = "") -> Response:
        node = await store.run(lambda s: route_user(s, user_id))
        return await forward(request, node, f"/api/auth/credentials/{user_id}" + (f"/{rest}" if rest else ""))

    @app.websocket("/api/auth/session/{session_id}/novnc/websock")
    async def websock(ws: WebSocket, session_id: str, token: str = "") -> None:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="binary" if "binary" in offered else None)
        with bind_session(session_id):
            try:
                node = await store.run(lambda s: route_session(s, session_id))
            except Unknown:
                await ws.close(UNKNOWN, "unknown session")
                return
            except HearthError as exc:
                code = 4503 if isinstance(exc, StoreError) else 4502
                await ws.close(code, close_reason(exc.reason))
                return

            async def why_down() -> str | None:
                with contextlib.suppress(HearthError, Unknown):
                    await store.run(lambda s: route_session(s, session_id))
                    return None
                view = next((n for n in await store.run(list_nodes) if n.id == node.id), None)
                return (view.reason or "").removeprefix(f"[node] node {node.id} ") or None if view else None

            await relay_viewer(ws, node.id, node.address, session_id, token, why_down, tls)

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app


async def _chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    finally:
        await resp.aclose()


def _rewrite(resp: Response, node_base: str, edge_base: str) -> Response:
    """A node that builds viewer URLs from its own address (no HEARTH_PUBLIC_URL) gets them pointed at the edge."""
    if isinstance(resp, StreamingResponse) or "json" not in resp.headers.get("content-type", ""):
        return resp
    raw = bytes(resp.body)
    fixed = raw.replace(node_base.rstrip("/").encode(), edge_base.encode())
    if fixed == raw:
        return resp
    headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
    return Response(fixed, status_code=resp.status_code, headers=headers)
