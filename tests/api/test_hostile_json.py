"""Hostile JSON on every route that takes a body (property-based): deep nesting, lone surrogates, huge numbers,
duplicate keys, NaN/Infinity, invalid UTF-8 — with and without an API key, as JSON, untyped and text bodies.

Never a 5xx, every answer a status the OpenAPI declares for that route with a JSON error body naming the problem,
and never a traceback in the log (every log record of the run is captured). The real app (build + make_app), no
root: a driver that refuses every boot (tests/api/offline.py), driven over ASGI.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearth.api import jsonguard
from hearth.config import Settings
from tests.api.offline import AUTH, asgi, declared, offline_app

EXAMPLES = 120  # per route
FIELDS = ["user_id", "provider", "mode", "return_url", "scope", "code", "x"]

# ---- hostile JSON texts ---------------------------------------------------------------------------------------

surrogate = st.integers(0xD800, 0xDFFF).map(lambda c: f'"\\u{c:04x}"')
text = st.text(alphabet=st.characters(codec=None), max_size=12).map(json.dumps)  # ensure_ascii: \udXXX escapes
plain = st.sampled_from(['"user-1"', '"control"', '"view"', '"direct"', '"remote_browser"', '"claude_code"', '""'])
huge_int = st.integers(1, 6000).map(lambda n: "-" * (n % 2) + "9" * n)
odd_number = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1.7e308", "4.9e-324", "-0", "1E+2"])
number = st.one_of(st.integers(-(10**25), 10**25).map(str), huge_int, odd_number)
scalar = st.one_of(st.sampled_from(["null", "true", "false"]), number, surrogate, text, plain)


def array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def obj(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


key = st.one_of(st.sampled_from(FIELDS).map(json.dumps), surrogate, text)
value = st.recursive(
    scalar,
    lambda kids: st.one_of(st.lists(kids, max_size=4).map(array), st.lists(st.tuples(key, kids), max_size=4).map(obj)),
    max_leaves=12,
)


@st.composite
def nested(draw: st.DrawFn) -> str:
    depth = draw(st.sampled_from([jsonguard.MAX_DEPTH, jsonguard.MAX_DEPTH + 1, 200, 2000, 20000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"user_id":', "}"), ('[{"a":', "}]")]))
    inner = draw(scalar)
    balanced = draw(st.booleans())
    return opener * depth + inner + (closer * depth if balanced else "")


@st.composite
def duplicated(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(FIELDS)).join('""')
    return obj([(name, draw(scalar)), *draw(st.lists(st.tuples(key, scalar), max_size=2)), (name, draw(scalar))])


field_body = st.lists(st.tuples(st.sampled_from(FIELDS).map(json.dumps), value), min_size=1, max_size=4).map(obj)
bodies: st.SearchStrategy[bytes] = st.one_of(
    field_body.map(str.encode),
    value.map(str.encode),
    nested().map(str.encode),
    duplicated().map(str.encode),
    st.binary(max_size=40),  # not UTF-8, not JSON
    field_body.map(lambda t: t.encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from(["application/json", None, "text/plain", "application/merge-patch+json"])


def body_routes(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path template) of every operation that takes a body (declared, or read from the request: every
    POST) — the set is taken from the app's own OpenAPI, so a new route is covered without editing this test."""
    out = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op or method == "post":
                out.append((method.upper(), path))
    return sorted(out)


def concrete(path: str, session_id: str) -> str:
    return path.replace("{session_id}", session_id).replace("{user_id}", "user-1").replace("{provider}", "claude_code")


def fuzz_route(
    send: Callable[[bytes, dict[str, str]], Any], label: str, allowed: set[int], seen: Counter[str], problems: list[str]
) -> None:
    """EXAMPLES hostile bodies to one route (blocking); what is wrong goes to `problems`."""

    @settings(
        max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(body=bodies, ctype=content_types, with_key=st.booleans())
    def run(body: bytes, ctype: str | None, with_key: bool) -> None:
        r = send(body, {**(AUTH if with_key else {}), **({"Content-Type": ctype} if ctype else {})})
        seen[f"{label} {r.status_code}"] += 1
        where = f"{label} {body[:80]!r} ({ctype}, key={with_key}) → {r.status_code}"
        if r.status_code >= 500 or r.status_code not in allowed:
            problems.append(f"{where}: {r.text[:200]}")
        elif r.status_code >= 400 and not isinstance(r.json().get("error"), str):
            problems.append(f"{where}: no error reason: {r.text[:200]}")

    run()


async def test_hostile_json_never_a_5xx_nor_a_traceback(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = make_settings(HEARTH_RATE_LIMIT="0", MAX_SESSIONS_PER_USER="1000", MAX_BROWSER_SESSIONS="1000")
    async with offline_app(s) as off, asgi(off.app) as http:
        schema = (await http.get("/openapi.json")).json()
        routes = body_routes(schema)
        assert ("POST", "/api/auth/start") in routes and ("POST", "/api/auth/session/{session_id}/token") in routes
        caplog.clear()
        loop = asyncio.get_running_loop()
        seen: Counter[str] = Counter()
        problems: list[str] = []

        for method, template in routes:
            allowed = declared(schema, method, template)
            label = f"{method} {template}"

            def send(body: bytes, headers: dict[str, str], method: str = method, template: str = template) -> Any:
                call = http.request(method, concrete(template, off.session_id), content=body, headers=headers)
                return asyncio.run_coroutine_threadsafe(call, loop).result(timeout=60)

            # hypothesis drives a worker thread; the requests run on the app's loop
            await asyncio.to_thread(fuzz_route, send, label, allowed, seen, problems)

        print()
        for line in sorted(seen):
            print(f"  {line}: {seen[line]}")
        assert problems == [], "\n".join(problems[:10])
        assert sum(seen.values()) >= len(routes) * EXAMPLES // 2
        refused = sum(n for k, n in seen.items() if k.endswith(" 422"))
        print(f"{sum(seen.values())} hostile requests on {len(routes)} routes; {refused} refused with 422")
        tracebacks = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info or r.stack_info]
        errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
        assert tracebacks == [] and errors == [], (tracebacks[:5], errors[:5])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/auth/start", b"[" * 2000 + b"]" * 2000),
        ("/api/auth/start", b'{"user_id": "\\ud800"}'),
        ("/api/auth/session/{sid}/token", b'{"scope": "\\ud800"}'),
        ("/api/auth/start", b'{"user_id": 1e999}'),
        ("/api/auth/start", b'{"user_id": "a", "user_id": "b"}'),
    ],
)
@pytest.mark.parametrize("with_key", [True, False])
async def test_the_reported_bodies_get_a_422_naming_the_problem(
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: bytes,
    with_key: bool,
) -> None:
    """Issue 20's bodies (a 500 with a traceback before, the first even without a key): 422, the field named."""
    caplog.set_level(logging.DEBUG)
    s = make_settings(HEARTH_RATE_LIMIT="0")
    async with offline_app(s) as off, asgi(off.app) as http:
        caplog.clear()
        headers = {"Content-Type": "application/json", **(AUTH if with_key else {})}
        r = await http.post(path.replace("{sid}", off.session_id), content=body, headers=headers)
        assert r.status_code == 422, r.text
        out = r.json()
        assert out["error"] and out["hint"] and out["detail"][0]["loc"][0] == "body", out
        if b"ud800" in body:
            assert out["detail"][0]["loc"] == ["body", "scope" if "token" in path else "user_id"], out
            assert "U+D800" in out["error"]
        assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


async def test_a_control_character_in_the_path_is_a_422_not_a_store_error(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """`/api/auth/session/%00`: on PostgreSQL the NUL reached the database, which refused it — a 503 'the store is
    unavailable'. Refused before any route looks it up."""
    caplog.set_level(logging.DEBUG)
    s = make_settings(HEARTH_RATE_LIMIT="0")
    async with offline_app(s) as off, asgi(off.app) as http:
        caplog.clear()
        for method, path in [
            ("GET", "/api/auth/session/%00"),
            ("POST", "/api/auth/session/a%00b/heartbeat"),
            ("GET", "/api/users/%1f/cli-sandbox"),
            ("DELETE", "/api/auth/credentials/u/%7f"),
            ("GET", "/api/diagnostics/%00"),
        ]:
            r = await http.request(method, path, headers=AUTH)
            assert r.status_code == 422, (path, r.text)
            assert r.json()["detail"][0]["loc"] == ["path"] and "control character" in r.json()["error"]
        assert (await http.get(f"/api/auth/session/{off.session_id}", headers=AUTH)).status_code == 200
        assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
