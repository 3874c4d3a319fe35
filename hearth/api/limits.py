"""API hardening for `/api/*` HTTP routes: a request body size limit and a per-client rate limit.

One ASGI middleware, installed per app (`install(app, settings)`); all state lives in that app's instance (no
module-level state). `/health`, `/metrics`, static files and the viewer WebSocket are not affected.

- Body: a `Content-Length` above the limit is refused at once; a body without one (chunked) is read up to the limit
  and refused as soon as it goes beyond — the app never sees more than `max_body` bytes. 413 with a JSON reason.
- JSON: every non-empty body must be strict JSON (hearth/api/jsonguard.py: nesting depth checked before parsing,
  UTF-8, no NaN/Infinity, numbers in range, no duplicate keys, strings that are Unicode text) → else 422 naming the
  field, before the app sees it and before authentication (a `[` × 2000 body was a RecursionError: a 500 with a
  traceback; a lone surrogate could not be rendered back: a 500).
- Path: a path holding a control character (`%00` …) → 422 before any route looks it up (on PostgreSQL a NUL in
  a session id was a 503 "the store is unavailable").
- Rate: a token bucket per client — per valid API key (by its digest; the key itself is never kept), else per client
  address, so presenting random keys gives an attacker no fresh buckets. 429 with `Retry-After` and a JSON reason.
  The bucket map is bounded (least recently used clients are forgotten first).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.api import jsonguard
from hearth.api.auth import ApiKeys, digest
from hearth.api.problems import refusal_body
from hearth.config import Settings
from hearth.ratelimit import TokenBucket as TokenBucket

DEFAULT_MAX_BODY = 64 * 1024
DEFAULT_RATE = 20.0  # requests per second, per client
DEFAULT_BURST = 40.0  # requests at once, per client
MAX_CLIENTS = 10_000  # buckets kept; beyond, the least recently seen client is forgotten (a full bucket again)
PREFIX = "/api/"
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_PROMPTS = re.compile(r"/api/users/[^/]+/prompts")


@dataclass(frozen=True)
class Limits:
    max_body: int = DEFAULT_MAX_BODY
    rate: float = DEFAULT_RATE  # <= 0: no rate limit
    burst: float = DEFAULT_BURST
    prompt_body: int = 0  # POST /api/users/{id}/prompts: HEARTH_MAX_PROMPT_BYTES, JSON-escaped, plus the rest

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """HEARTH_MAX_BODY, HEARTH_RATE_LIMIT and HEARTH_RATE_BURST (defaults until the settings define them)."""
        return cls(
            max_body=int(getattr(settings, "max_body", DEFAULT_MAX_BODY)),
            rate=float(getattr(settings, "rate_limit", DEFAULT_RATE)),
            burst=float(getattr(settings, "rate_burst", DEFAULT_BURST)),
            prompt_body=6 * int(getattr(settings, "max_prompt_bytes", 0)) + 64 * 1024,
        )


class RateLimiter:
    """Token buckets by client key, at most `max_clients` of them (least recently used forgotten first)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.rate, self.burst, self.clock, self.max_clients = rate, burst, clock, max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str) -> float:
        """0.0 when `client` may go ahead, else the seconds it has to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        wait = bucket.take(now)
        if wait:
            self.refused += 1
        return wait


def client_key(scope: Scope, keys: ApiKeys) -> tuple[str, str]:
    """(bucket key, what it is for the reason): a valid API key's digest, else the client address."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, presented = value.decode("latin-1").partition(" ")
            presented = presented.strip()
            if scheme.lower() == "bearer" and presented and keys.check(presented):
                return "key:" + digest(presented).hex()[:32], "API key"
            break
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}", "client address"


async def _json(
    send: Send, status: int, body: dict[str, object], headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    raw = json.dumps(body).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": base})
    await send({"type": "http.response.body", "body": raw})


class LimitsMiddleware:
    """Body limit and rate limit for `/api/*` HTTP requests (pure ASGI)."""

    def __init__(self, app: ASGIApp, limits: Limits, limiter: RateLimiter, keys: ApiKeys) -> None:
        self.app, self.limits, self.limiter, self.keys = app, limits, limiter, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        key, what = client_key(scope, self.keys)
        wait = self.limiter.check(key)
        if wait:
            lim = self.limits
            after = max(1, math.ceil(wait))
            await _json(
                send,
                429,
                {
                    "error": f"rate limit exceeded: {lim.rate:g} requests/s with bursts of {lim.burst:g} per {what}; "
                    f"retry after {after}s",
                    "hint": "slow down, or raise HEARTH_RATE_LIMIT / HEARTH_RATE_BURST",
                },
                ((b"retry-after", str(after).encode()),),
            )
            return
        bad_path = path_refusal(str(scope.get("path", "")))
        if bad_path is not None:
            await _json(send, 422, refusal_body(bad_path, "path"))
            return
        max_body = self.limits.max_body
        if self.limits.prompt_body > max_body and _PROMPTS.fullmatch(str(scope.get("path", ""))):
            max_body = self.limits.prompt_body  # a prompt may be larger (its own limit answers 413 by its name)
        declared = None
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await _json(send, 400, {"error": "invalid Content-Length header"})
                    return
        if declared is not None and declared > max_body:
            await _too_large(send, f"{declared} bytes", max_body)
            return
        # Read the body here (at most max_body bytes), then hand it to the app in one message.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_body:
                await _too_large(send, f"more than {max_body} bytes", max_body)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        refusal = jsonguard.check(body)
        if refusal is not None:
            await _json(send, 422, refusal_body(refusal))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def path_refusal(path: str) -> jsonguard.Refusal | None:
    """Why a (decoded) request path is refused: a control character; None when it has none."""
    found = _CONTROL.search(path)
    if found is None:
        return None
    return jsonguard.Refusal(
        f"the request path holds a control character (U+{ord(found.group()):04X}) at character {found.start()}; "
        "session ids, user ids and provider names are printable text",
        "path_control",
    )


async def _too_large(send: Send, got: str, limit: int) -> None:
    await _json(
        send,
        413,
        {
            "error": f"request body too large: {got}, the limit is {limit} bytes",
            "hint": "API request bodies are small JSON objects (HEARTH_MAX_BODY)",
        },
        ((b"connection", b"close"),),
    )


def add(app: FastAPI, limits: Limits, keys: ApiKeys, clock: Callable[[], float] = time.monotonic) -> RateLimiter:
    """Install the middleware with explicit limits; returns this app's limiter (also at `app.state.rate_limiter`)."""
    limiter = RateLimiter(limits.rate, limits.burst, clock)
    app.add_middleware(LimitsMiddleware, limits=limits, limiter=limiter, keys=keys)
    app.state.rate_limiter = limiter
    return limiter


def install(app: FastAPI, settings: Settings) -> None:
    """Body size and rate limits for the app's `/api/*` HTTP routes, from the settings."""
    add(app, Limits.from_settings(settings), ApiKeys(settings.api_keys))
