"""How the API answers errors, and how it declares them (the OpenAPI is the contract).

Every error body is `ErrorOut` (`error`, optional `hop`, `hint`, `node`); a 422 is `ValidationErrorOut` (the same
plus `detail`: each invalid field with `loc`, `msg`, `type`) whether the limits middleware refused the body as not
strict JSON (hearth/api/jsonguard.py) or FastAPI's validation refused a field. A validation error never echoes the
input back (it may be what cannot be rendered, or a secret), and error bodies are rendered ASCII-only: nothing a
client sends can make an error answer fail to render (that was a 500).

`declare(...)` gives the `responses=` of a route or router: every status code it can answer, with its body schema.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from hearth.api import jsonguard
from hearth.api.schemas import ErrorOut, ValidationErrorOut
from hearth.errors import ConfigError, HearthError, PoolExhausted, StoreError
from hearth.session.admission import Limit, LimitExceeded

MAX_LISTED = 3  # invalid fields named in a 422's `error` (all of them are in `detail`)
VALIDATION_HINT = "fix the named field; the API's schema is at /openapi.json"

# The status codes every /api/* route can answer: the limits middleware (400 bad Content-Length, 413, 429, and 422
# for a body that is not strict JSON) and request validation (422).
API = (400, 413, 422, 429)
DESCRIPTIONS: dict[int, str] = {
    400: "bad request: an invalid Content-Length, or a request the reason names",
    401: "missing or invalid API key",
    403: "the credentials do not allow this (e.g. a view-only viewer token)",
    404: "unknown session (or user, credentials, sandbox: the reason names it)",
    409: "the session is not in a state that allows this",
    413: "request body larger than HEARTH_MAX_BODY",
    421: "the session belongs to another node: `node` names it (send the request there, or through the edge)",
    422: "the request is not valid: the body is not strict JSON (too deeply nested, not UTF-8, NaN/Infinity, a "
    "number out of range, a duplicate key, a string that is not Unicode text) or a field fails validation",
    429: "rate limit (HEARTH_RATE_LIMIT) or the user's session limit (MAX_SESSIONS_PER_USER); see Retry-After",
    502: "a hop of the session path failed: `hop` names it, `hint` the fix",
    500: "the controller's own configuration cannot serve this (`hop` is `config`, `hint` the fix), or an internal "
    "error (the controller log has the details)",
    503: "the store is unavailable or the capacity is used up (see Retry-After), or the controller is stopping",
}


def status_for(exc: HearthError | LimitExceeded) -> int:
    """The HTTP status of a HearthError: this controller's configuration 500 (not a hop of the session path: no retry
    elsewhere fixes it), an unavailable store or a used-up pool 503 (retry), any other hop 502. Of a refused new
    session (LimitExceeded): the user's own cap 429, a full cluster or node or a closing controller 503."""
    if isinstance(exc, LimitExceeded):
        return 429 if exc.kind is Limit.USER else 503
    if isinstance(exc, ConfigError):
        return 500
    if isinstance(exc, StoreError | PoolExhausted):
        return 503
    return 502


def declare(*codes: int, api: bool = True, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for these codes (plus `API` for /api/* routes); `descriptions` override by `_<code>`."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, *(API if api else ())}):
        model = ValidationErrorOut if code == 422 else ErrorOut
        out[code] = {"model": model, "description": descriptions.get(f"_{code}", DESCRIPTIONS[code])}
    return out


# One server-sent event (the OpenAPI 3.2 convention schemathesis checks each event against).
EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def also(content_type: str, responses: dict[int | str, dict[str, Any]], *codes: int) -> dict[int | str, Any]:
    """`responses` where `codes` may also come as `content_type` (an HTML page, an event stream)."""
    out = {k: dict(v) for k, v in responses.items()}
    schema = EVENT if content_type == "text/event-stream" else {"type": "string"}
    for code in codes:
        entry = out.setdefault(code, {"description": DESCRIPTIONS.get(code, "OK")})
        entry["content"] = {**entry.get("content", {}), content_type: {"schema": schema}}
    return out


class AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate in a reason renders as `\\ud800`."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def field_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's validation errors without their input and context: `loc`, `msg`, `type`."""
    out = []
    for e in errors:
        loc = [p if isinstance(p, int) else str(p) for p in e.get("loc", ())]
        out.append({"loc": loc, "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    return out


def validation_body(fields: list[dict[str, Any]]) -> dict[str, Any]:
    named = "; ".join(f"{jsonguard.field_name(tuple(f['loc']))}: {f['msg']}" for f in fields[:MAX_LISTED])
    more = f" (and {len(fields) - MAX_LISTED} more)" if len(fields) > MAX_LISTED else ""
    return {"error": f"invalid request: {named}{more}", "hint": VALIDATION_HINT, "detail": fields}


def refusal_body(refusal: jsonguard.Refusal, where: str = "body") -> dict[str, Any]:
    """The 422 body for a body the JSON guard (or a path the limits) refused: the shape of a validation error."""
    field = {"loc": [where, *refusal.loc], "msg": refusal.reason, "type": refusal.kind}
    hint = "send a small JSON object of UTF-8 text (RFC 8259), each key once" if where == "body" else VALIDATION_HINT
    return {"error": refusal.reason, "hint": hint, "detail": [field]}


def install(app: FastAPI) -> None:
    """The 422 and HTTPException handlers: ErrorOut-shaped bodies that always render."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, exc: RequestValidationError) -> Response:
        return AsciiJSON(validation_body(field_errors(exc.errors())), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_r: Request, exc: HTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code in (204, 304) or exc.status_code < 200:
            return Response(status_code=exc.status_code, headers=headers)
        return AsciiJSON({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)
