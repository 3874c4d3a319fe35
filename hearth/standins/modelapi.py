"""Stand-ins for the model APIs the pinned CLIs call for a prompt, answered by the providers' network stand-in
(hearth/standins/standin.py) inside a namespace of our own, offline.

What each CLI calls (read off their bundles and their requests to the stand-in):
- Claude Code: `POST api.anthropic.com/v1/messages?beta=true` (Messages API, streamed SSE), its OAuth refresh at
  `POST platform.claude.com/v1/oauth/token` (grant_type=refresh_token);
- Codex signed in with ChatGPT: `POST chatgpt.com/backend-api/codex/responses` (Responses API, streamed SSE), its
  refresh at `POST auth.openai.com/oauth/token`;
- Gemini CLI signed in with Google: `POST cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse`
  (Code Assist, streamed SSE), its refresh at `POST oauth2.googleapis.com/token`.

One `ModelAPI` holds the account's state: the access token the model API accepts (others get 401), the refresh
token the token endpoint accepts, which it ROTATES on every refresh (the old one is refused afterwards, as a
provider with rotation does), and `revoked` (both answer 401 / invalid_grant). An answer is streamed in
`chunks` pieces `delay` seconds apart, so a prompt can be cancelled mid-stream. WRITE_MARKER asks Claude Code and
Gemini CLI to write WRITE_FILE in their workspace with their own tool (what permissions allow). TOOL_MARKER is
first answered with a tool call (Claude Code: Read of a file; Codex: a shell command; Gemini: read_file) and,
once the tool's result comes back, with the text.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hearth.standins.standin import CURRENT, Net, Responder, default_responder, fake_jwt

__all__ = [
    "ANSWER",
    "TOOL_FILE",
    "TOOL_MARKER",
    "WRITE_FILE",
    "WRITE_MARKER",
    "ModelAPI",
    "fake_jwt",
    "model_route",
    "responder",
]

ANSWER = "hearth-standin-ready: the quick brown fox jumps over the lazy dog."
TOOL_MARKER = "[hearth:tool]"
TOOL_FILE = "pelican.txt"  # the file a tool call reads (in the CLI's working directory)
WRITE_MARKER = "[hearth:write]"  # asks for a file written in the workspace (Claude Code: Write; Gemini: write_file)
WRITE_FILE = "hearth-written.txt"
WRITE_CONTENT = "written by the model through the CLI's own tool\n"


@dataclass
class ModelAPI:
    """The stand-in account: tokens, rotation, revocation, and how answers stream."""

    answer: str = ANSWER
    chunks: int = 4
    delay: float = 0.0
    revoked: bool = False
    generations: dict[str, int] = field(default_factory=dict)  # provider → refreshes so far (0: sign-in's tokens)
    refreshes: list[str] = field(default_factory=list)  # provider of each accepted refresh
    prompts: list[str] = field(default_factory=list)  # provider of each streamed answer
    lock: threading.Lock = field(default_factory=threading.Lock)
    pieces_out: int = 0
    streaming: threading.Event = field(default_factory=threading.Event)  # an answer is on its way, part sent

    def tokens(self, provider: str) -> tuple[str, str]:
        """(access, refresh) of the current generation for `provider`: generation 0 is what sign-in issued."""
        g = self.generations.get(provider, 0)
        if provider == "claude_code":
            return (f"sk-ant-oat01-test{g or ''}", f"sk-ant-ort01-test{g or ''}")
        if provider == "codex":
            return (f"codex-access-{g}", "rt-test" if g == 0 else f"rt-test-{g}")
        return (f"ya29.test{g or ''}", "1//test")  # Google keeps the refresh token (its auth library does too)

    def _authorised(self, provider: str, headers_auth: str | None, access_claim: str | None = None) -> bool:
        if self.revoked:
            return False
        if provider == "codex":  # Codex sends a JWT access token: its `hearth_gen` claim names the generation
            return access_claim is None or access_claim == str(self.generations.get(provider, 0))
        want = self.tokens(provider)[0]
        return headers_auth is None or headers_auth == f"Bearer {want}"

    def pieces(self, text: str) -> list[str]:
        n = max(1, min(self.chunks, len(text)))
        step = -(-len(text) // n)
        return [text[i : i + step] for i in range(0, len(text), step)]

    def pause(self) -> None:
        """Before each piece of an answer: the pacing, and `streaming` set once one piece is out (mid-stream)."""
        with self.lock:
            self.pieces_out += 1
            if self.pieces_out >= 2:
                self.streaming.set()
        if self.delay:
            time.sleep(self.delay)


def _sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


def _form(body: bytes) -> dict[str, str]:
    try:
        obj = json.loads(body)
        return {k: str(v) for k, v in obj.items()} if isinstance(obj, dict) else {}
    except ValueError:
        return dict(urllib.parse.parse_qsl(body.decode(errors="replace")))


def _wants_tool(body: bytes, done_marker: bytes, marker: str = TOOL_MARKER) -> bool:
    """The prompt asks for a tool and the tool's result is not in the conversation yet."""
    return marker.encode() in body and done_marker not in body


# ---- token endpoints: refresh with rotation, revocation ----------------------------------------------------
def _refresh(api: ModelAPI, provider: str, body: bytes) -> tuple[int, Any] | None:
    form = _form(body)
    if form.get("grant_type") != "refresh_token":
        return None
    with api.lock:
        if api.revoked or form.get("refresh_token") != api.tokens(provider)[1]:
            desc = "Refresh token revoked" if api.revoked else "Refresh token not found or already used"
            return 400, {"error": "invalid_grant", "error_description": desc}
        api.generations[provider] = api.generations.get(provider, 0) + 1
        api.refreshes.append(provider)
        access, refresh = api.tokens(provider)
    now = int(time.time())
    if provider == "claude_code":
        return 200, {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": 3600,
            "token_type": "Bearer",
            "scope": "user:inference user:profile",
            "account": {"uuid": "00000000-0000-4000-8000-000000000001", "email_address": "t@example.test"},
            "organization": {"uuid": "00000000-0000-4000-8000-000000000002", "name": "Test"},
        }
    if provider == "codex":
        claims = {
            "email": "t@example.test",
            "iat": now,
            "exp": now + 3600,
            "hearth_gen": str(api.generations[provider]),
            "https://api.openai.com/auth": {"chatgpt_account_id": "acct-test", "chatgpt_plan_type": "plus"},
        }
        return 200, {"id_token": fake_jwt(claims), "access_token": fake_jwt(claims), "refresh_token": refresh}
    return 200, {
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": 3599,
        "token_type": "Bearer",
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "id_token": fake_jwt({"email": "t@example.test", "sub": "1", "iat": now, "exp": now + 3600}),
    }


# ---- Claude Code: Anthropic Messages API, streamed -----------------------------------------------------------
def _claude(api: ModelAPI, body: bytes) -> Iterator[bytes]:
    try:
        req = json.loads(body)
    except ValueError:
        req = {}
    model = str(req.get("model") or "claude-standin")
    usage = {"input_tokens": 12, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    msg = {"id": "msg_standin", "type": "message", "role": "assistant", "model": model, "content": []}
    yield _sse("message_start", {"type": "message_start", "message": {**msg, "stop_reason": None, "usage": usage}})
    write = _wants_tool(body, b"tool_result", WRITE_MARKER)
    if write or _wants_tool(body, b"tool_result"):
        name = "Write" if write else "Read"
        block = {"type": "tool_use", "id": "toolu_standin", "name": name, "input": {}}
        yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        path = _claude_cwd(req) + "/" + (WRITE_FILE if write else TOOL_FILE)
        args = {"file_path": path, "content": WRITE_CONTENT} if write else {"file_path": path}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(args)}
        yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        for piece in api.pieces(api.answer):
            api.pause()
            delta = {"type": "text_delta", "text": piece}
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        stop = "end_turn"
    end = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}}
    yield _sse("message_delta", {**end, "usage": {"output_tokens": 9}})
    yield _sse("message_stop", {"type": "message_stop"})


def _claude_cwd(req: dict[str, Any]) -> str:
    """The working directory Claude Code names in its system prompt ("Primary working directory: …")."""
    text = json.dumps(req.get("system", ""))
    for marker in ("Primary working directory: ", "Working directory: "):
        if marker in text:
            return text.split(marker, 1)[1].split("\\n", 1)[0].strip()
    return "."


# ---- Codex: OpenAI Responses API, streamed -------------------------------------------------------------------
def _codex(api: ModelAPI, body: bytes) -> Iterator[bytes]:
    try:
        req = json.loads(body)
    except ValueError:
        req = {}
    model = str(req.get("model") or "gpt-standin")
    resp = {"id": "resp_standin", "object": "response", "model": model, "status": "in_progress", "output": []}
    yield _sse("response.created", {"type": "response.created", "response": resp})
    if req.get("generate") is False:  # Codex's connection warm-up over its WebSocket: no answer wanted
        warm = {**resp, "status": "completed", "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
        yield _sse("response.completed", {"type": "response.completed", "response": warm})
        return
    if _wants_tool(body, b"function_call_output"):
        call = {
            "type": "function_call",
            "id": "fc_standin",
            "call_id": "call_standin",
            "name": "shell",
            "arguments": json.dumps({"command": ["cat", TOOL_FILE]}),
            "status": "completed",
        }
        yield _sse("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": call})
    else:
        item = {"type": "message", "id": "msg_standin", "role": "assistant", "status": "in_progress", "content": []}
        yield _sse(
            "response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": item}
        )
        for piece in api.pieces(api.answer):
            api.pause()
            delta = {"type": "response.output_text.delta", "item_id": "msg_standin", "output_index": 0}
            yield _sse("response.output_text.delta", {**delta, "content_index": 0, "delta": piece})
        content = [{"type": "output_text", "text": api.answer, "annotations": []}]
        done = {**item, "status": "completed", "content": content}
        yield _sse("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": done})
    usage = {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 21,
    }
    finished = {**resp, "status": "completed", "usage": usage}
    yield _sse("response.completed", {"type": "response.completed", "response": finished})


# ---- Gemini CLI: Code Assist streamGenerateContent -----------------------------------------------------------
def _gemini(api: ModelAPI, body: bytes) -> Iterator[bytes]:
    usage = {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 21}
    if _wants_tool(body, b"functionResponse", WRITE_MARKER):
        args = {"file_path": WRITE_FILE, "content": WRITE_CONTENT}
        call = {"functionCall": {"name": "write_file", "args": args}}
        first = {"content": {"role": "model", "parts": [call]}, "finishReason": "STOP"}
        yield _sse(None, {"response": {"candidates": [first], "usageMetadata": usage}, "traceId": "standin"})
        return
    if _wants_tool(body, b"functionResponse"):
        call = {"functionCall": {"name": "read_file", "args": {"file_path": TOOL_FILE}}}
        first = {"content": {"role": "model", "parts": [call]}, "finishReason": "STOP"}
        yield _sse(None, {"response": {"candidates": [first], "usageMetadata": usage}, "traceId": "standin"})
        return
    parts = api.pieces(api.answer)
    for i, piece in enumerate(parts):
        api.pause()
        cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": piece}]}}
        if i == len(parts) - 1:
            cand["finishReason"] = "STOP"
        out: dict[str, Any] = {"candidates": [cand]}
        if i == len(parts) - 1:
            out["usageMetadata"] = usage
        yield _sse(None, {"response": out, "traceId": "standin"})


def _ws_read(rfile: Any) -> tuple[int, bytes]:
    """One client frame (RFC 6455; clients mask): (opcode, payload)."""
    head = rfile.read(2)
    if len(head) < 2:
        raise ValueError("closed")
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(rfile.read(2), "big")
    elif n == 127:
        n = int.from_bytes(rfile.read(8), "big")
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(n)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _ws_send(wfile: Any, payload: bytes, opcode: int = 1) -> None:
    n = len(payload)
    size = (
        bytes([n])
        if n < 126
        else (bytes([126]) + n.to_bytes(2, "big") if n < 65536 else bytes([127]) + n.to_bytes(8, "big"))
    )
    wfile.write(bytes([0x80 | opcode]) + size + payload)
    wfile.flush()


def _codex_ws(api: ModelAPI) -> Any:
    """Codex's Responses WebSocket: each `response.create` text frame is answered with the same events the SSE
    stream carries, one text frame each (the data lines, without `event:`)."""

    def talk(rfile: Any, wfile: Any) -> None:
        while True:
            opcode, data = _ws_read(rfile)
            if opcode == 8:
                _ws_send(wfile, data[:2], 8)
                return
            if opcode == 9:
                _ws_send(wfile, data, 10)
                continue
            if opcode != 1:
                continue
            with api.lock, contextlib.suppress(ValueError, AttributeError):
                if json.loads(data).get("generate") is not False:
                    api.prompts.append("codex")
            for event in _codex(api, data):
                line = event.split(b"data: ", 1)[1].strip()
                _ws_send(wfile, line)

    return talk


def _bearer_unauthorised(provider: str) -> tuple[int, Any]:
    if provider == "claude_code":
        err = {"type": "authentication_error", "message": "OAuth token has been revoked. Please obtain a new token."}
        return 401, {"type": "error", "error": err}
    if provider == "codex":
        return 401, {"error": {"message": "Your authentication token has been invalidated.", "code": "token_revoked"}}
    return 401, {
        "error": {
            "code": 401,
            "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED",
        }
    }


def _codex_gen(auth: str | None) -> str | None:
    """The `hearth_gen` claim of Codex's bearer JWT (None before any refresh: sign-in's token has none)."""
    if not auth or not auth.startswith("Bearer "):
        return None
    try:
        import base64

        part = auth[7:].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return None
    gen = claims.get("hearth_gen") if isinstance(claims, dict) else None
    return str(gen) if gen is not None else "0"


def model_route(
    api: ModelAPI, method: str, host: str, path: str, body: bytes, auth: str | None
) -> tuple[int, Any] | None:
    """The model API's and token endpoints' answer, or None when the request is not theirs."""
    p = path.split("?")[0]
    if (method, host, p) == ("GET", "chatgpt.com", "/backend-api/wham/accounts/check"):
        return 200, CODEX_ACCOUNTS
    if method == "POST" and (host, p) in TOKEN_ENDPOINTS:
        return _refresh(api, TOKEN_ENDPOINTS[(host, p)], body)
    if (method, host, p) == ("GET", "chatgpt.com", "/backend-api/codex/responses"):  # the WebSocket upgrade
        if not _authorised(api, "codex", None, _codex_gen(auth)):
            return _bearer_unauthorised("codex")
        return 101, _codex_ws(api)
    provider = MODEL_ENDPOINTS.get((host, p)) or (
        "gemini_cli" if p.endswith(":streamGenerateContent") and host == "cloudcode-pa.googleapis.com" else None
    )
    if method != "POST" or provider is None:
        return None
    if provider == "codex":
        ok = _authorised(api, provider, None, _codex_gen(auth))
    else:
        ok = _authorised(api, provider, auth)
    if not ok:
        return _bearer_unauthorised(provider)
    with api.lock:
        api.prompts.append(provider)
    if provider == "claude_code":
        return 200, _claude(api, body)
    if provider == "codex":
        return 200, _codex(api, body)
    return 200, _gemini(api, body)


def _authorised(api: ModelAPI, provider: str, auth: str | None, claim: str | None = None) -> bool:
    with api.lock:
        return api._authorised(provider, auth, claim)


CODEX_ACCOUNTS = {  # Codex's workspace routing discovery: the signed-in account, with no routing constraint
    "accounts": [
        {
            "id": "acct-test",
            "name": None,
            "plan_type": "plus",
            "structure": "personal",
            "profile_picture_url": None,
            "workspace_backend_origin": "NO_CONSTRAINT",
            "account_routing_override": "NO_CONSTRAINT",
        }
    ],
    "account_ordering": ["acct-test"],
    "default_account_id": "acct-test",
}
TOKEN_ENDPOINTS = {
    ("platform.claude.com", "/v1/oauth/token"): "claude_code",
    ("auth.openai.com", "/oauth/token"): "codex",
    ("oauth2.googleapis.com", "/token"): "gemini_cli",
}
MODEL_ENDPOINTS = {
    ("api.anthropic.com", "/v1/messages"): "claude_code",
    ("chatgpt.com", "/backend-api/codex/responses"): "codex",
    ("api.openai.com", "/v1/responses"): "codex",
}


def responder(api: ModelAPI) -> Responder:
    """A stand-in responder answering the model APIs from `api` and everything else as the default does."""

    def respond(net: Net, method: str, host: str, path: str, body: bytes) -> tuple[int, Any]:
        headers = getattr(CURRENT, "headers", None)
        auth = headers.get("Authorization") if headers is not None else None
        out = model_route(api, method, host, path, body, auth)
        return out if out is not None else default_responder(net, method, host, path, body)

    return respond
