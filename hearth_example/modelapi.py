"""The example provider's "model API", served by the example IdP (hearth_example/idp.py): stdlib only.

`POST /v1/model/stream` with `Authorization: Bearer <access token>` and `{"model", "messages": [{role, content}]}`
answers with JSON lines, streamed as they are made (`Connection: close`, no length):
`{"delta": "..."}`… `{"tool": {"name", "input"}}` `{"usage": {...}}` `{"done": true, "model"}`. The answer repeats
the last user message (`You said: …`) and counts the turns, so a continued conversation is visible. Directives in
the prompt, for tests: `[hang]` (one delta, then nothing until the client goes), `[slow]` (a delta every 0.2 s for
a minute), `[wait:N]` (one delta, N s of silence, then the answer), `[flood:N]` (N KiB of deltas), `[tool:ls]`, `[tool:write:NAME]` (a tool call the CLI performs).

401 `{"error": "token_expired"}` for an expired access token (the CLI refreshes), `{"error": "revoked"}` for a
revoked one, `{"error": "invalid_token"}` otherwise. The refresh grant rotates: a refresh token works once.
`POST /test/expire` expires every access token, `POST /test/revoke` revokes every token issued so far.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hearth_example.idp import IdpState

MAX_BODY = 4 << 20
_FLOOD = re.compile(r"\[flood:(\d{1,6})\]")
_WAIT = re.compile(r"\[wait:(\d{1,2})\]")
_TOOL = re.compile(r"\[tool:(ls|write:[A-Za-z0-9._-]{1,64})\]")


def refresh(st: IdpState, token: str) -> tuple[int, dict[str, Any]]:
    """The refresh grant: a known, unused refresh token → a new pair (the refresh token rotates)."""
    with st.lock:
        ok = token in st.refresh
        st.refresh.discard(token)
        revoked = token in st.revoked
    if not ok:
        st.log("refresh_refused", revoked=revoked)
        return 400, {"error": "invalid_grant", "error_description": "refresh token revoked or already used"}
    st.log("token_refreshed")
    return 200, st.issue()


def _auth(st: IdpState, header: str) -> str | None:
    """None when the bearer token may call the model, else the 401 error code."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    with st.lock:
        if token in st.revoked:
            return "revoked"
        expiry = st.access.get(token)
    if scheme.lower() != "bearer" or expiry is None:
        return "invalid_token"
    return "token_expired" if expiry < time.time() else None


def _reply(h: BaseHTTPRequestHandler, code: int, obj: Any) -> None:
    raw = json.dumps(obj).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(raw)))
    h.end_headers()
    h.wfile.write(raw)


def handle(h: BaseHTTPRequestHandler, st: IdpState, path: str) -> None:
    n = int(h.headers.get("Content-Length") or 0)
    if n > MAX_BODY:
        return _reply(h, 413, {"error": "too_large"})
    raw = h.rfile.read(n) if n else b""
    if path == "/test/expire":
        with st.lock:
            st.access = dict.fromkeys(st.access, 0.0)
        st.log("tokens_expired")
        return _reply(h, 200, {"expired": True})
    if path == "/test/revoke":
        with st.lock:
            st.revoked |= set(st.access) | st.refresh
            st.access, st.refresh = {}, set()
        st.log("tokens_revoked")
        return _reply(h, 200, {"revoked": True})
    if path != "/v1/model/stream":
        return _reply(h, 404, {"error": "not_found"})
    refused = _auth(st, h.headers.get("Authorization", ""))
    if refused is not None:
        st.log("model_refused", error=refused)
        return _reply(h, 401, {"error": refused})
    try:
        body = json.loads(raw or b"{}")
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return _reply(h, 400, {"error": "invalid_request"})
    st.log("model_called", turns=len(messages))
    h.close_connection = True
    h.send_response(200)
    h.send_header("Content-Type", "application/x-ndjson")
    h.send_header("Connection", "close")
    h.end_headers()
    try:
        _stream(h, messages, str(body.get("model") or "example-1"))
    except (BrokenPipeError, ConnectionResetError):
        return


def _line(h: BaseHTTPRequestHandler, obj: Any) -> None:
    h.wfile.write(json.dumps(obj).encode() + b"\n")
    h.wfile.flush()


def _stream(h: BaseHTTPRequestHandler, messages: list[dict[str, Any]], model: str) -> None:
    last = str(messages[-1].get("content", "")) if messages else ""
    turns = sum(1 for m in messages if m.get("role") == "user")
    if "[hang]" in last:
        _line(h, {"delta": "thinking"})
        while True:  # until the client goes away (the write then fails) or the process ends
            time.sleep(1.0)
            h.wfile.write(b"\n")
            h.wfile.flush()
    wait = _WAIT.search(last)
    if wait:
        _line(h, {"delta": "…"})
        time.sleep(int(wait.group(1)))
    flood = _FLOOD.search(last)
    if flood:
        chunk = "x" * 1023 + "\n"
        for _ in range(int(flood.group(1))):
            _line(h, {"delta": chunk})
    tool = _TOOL.search(last)
    if tool:
        name, _, arg = tool.group(1).partition(":")
        _line(h, {"tool": {"name": name, "input": {"path": arg or "."}}})
    words = f"You said: {last} (turn {turns})".split(" ")
    slow = "[slow]" in last
    for i, w in enumerate(words):
        _line(h, {"delta": w if i == 0 else " " + w})
        if slow:
            time.sleep(0.2)
    if slow:
        for _ in range(300):
            _line(h, {"delta": "."})
            time.sleep(0.2)
    _line(h, {"usage": {"input_tokens": len(last.split()), "output_tokens": len(words)}})
    _line(h, {"done": True, "model": model, "id": secrets.token_hex(4)})
