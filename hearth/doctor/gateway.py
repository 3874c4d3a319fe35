"""The end-to-end check: a viewer token, the WebSocket upgrade through the gateway (101) and the sandbox's RFB
banner relayed back — what the user's browser does. Skipped inside the gateway's own verdict (no recursion)."""

from __future__ import annotations

from urllib.parse import quote

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from hearth.doctor.context import Context, Step, Target, no_desktop
from hearth.doctor.report import Finding
from hearth.errors import Hop
from hearth.gateway.tokens.base import Scope
from hearth.rfb.client import RfbError, read_banner
from hearth.rfb.ws import WsByteStream

# x11vnc answers a new client after 0.1, 0.3 or (now and then) 1.1 s — it accepts between screen polls.
RFB_TIMEOUT = 1.5


# ---- the check ----------------------------------------------------------------------------------------------
async def _viewer_token(ctx: Context, t: Target) -> str:
    p = ctx.parts
    if p.tokens is not None:
        return p.tokens.issue(t.view.id, Scope.VIEW, 60)
    assert p.api_url and p.api_key
    async with httpx.AsyncClient(base_url=p.api_url, timeout=0.8) as http:
        r = await http.post(
            f"/api/auth/session/{quote(t.view.id)}/token",
            json={"scope": "view"},
            headers={"Authorization": f"Bearer {p.api_key}"},
        )
    if r.status_code != 200:
        raise ValueError(f"POST /api/auth/session/…/token answered HTTP {r.status_code}")
    token: str = r.json()["viewer_token"]
    return token


_CLOSE_HINTS = {
    4401: "the gateway refused a fresh viewer token: every controller instance needs the same HEARTH_TOKEN_SECRET",
    4404: "the gateway does not know this session: is --api pointing at the controller that owns it?",
    4408: "the session is not ready: wait for status ready (GET /api/auth/session/{id})",
}


async def gateway(ctx: Context) -> Finding:
    t, p = ctx.need_target(), ctx.parts
    assert p.api_url
    base = p.api_url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    path = f"/api/auth/session/{quote(t.view.id)}/novnc/websock"
    try:
        token = await _viewer_token(ctx, t)
    except (OSError, httpx.HTTPError, ValueError, KeyError) as exc:
        return Finding.bad(
            f"could not get a viewer token from {p.api_url} ({type(exc).__name__}: {exc})",
            "start the controller (`hearth serve`) or pass --api with its URL, and set HEARTH_API_KEYS",
        )
    try:
        async with ws_connect(
            f"{base}{path}?token={quote(token)}",
            subprotocols=["binary"],  # type: ignore[list-item]
            open_timeout=1.0,
            max_size=None,
        ) as ws:
            banner = await read_banner(WsByteStream(ws, RFB_TIMEOUT).read)
            proto = ws.subprotocol
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else 1006
        reason = exc.rcvd.reason if exc.rcvd else "no close frame"
        hint = _CLOSE_HINTS.get(code, "the close reason names the broken hop; fix that hop")
        return Finding.bad(f"{base}{path}: 101 Switching Protocols, then closed {code}: {reason}", hint)
    except InvalidStatus as exc:
        return Finding.bad(
            f"{base}{path}: upgrade refused with HTTP {exc.response.status_code}",
            "a proxy in front of hearth must pass `Upgrade`/`Connection` headers (see README, Behind nginx)",
        )
    except (OSError, TimeoutError, InvalidHandshake, RfbError) as exc:
        return Finding.bad(
            f"{base}{path}: {type(exc).__name__}: {exc}",
            f"the controller's gateway at {p.api_url} is unreachable or hung: check `hearth serve` and --api",
        )
    return Finding.good(f"{base}{path}: 101 (subprotocol {proto}), then {banner!r} from the sandbox")


def _no_gateway(ctx: Context) -> str | None:
    p = ctx.parts
    if not p.gateway:
        return "inside the gateway's own verdict (no recursion)"
    if not p.api_url:
        return "no controller URL (--api)"
    if p.tokens is None and not p.api_key:
        return "no API key (HEARTH_API_KEYS) to request a viewer token"
    return no_desktop(ctx)


GATEWAY_STEP = Step("gateway", Hop.GATEWAY, gateway, RFB_TIMEOUT + 0.2, needs=("rfb",), skip=_no_gateway)
