"""The OpenAPI is the contract: schemathesis runs every operation of the app's own schema against the live app
(uvicorn on loopback), valid and invalid cases, derandomized, a few hundred per operation, and checks every answer:
no server error, a status code the operation declares, a declared content type, a body that matches the declared
schema (the 422 body included). 0 failures.

The real app (build + make_app) without root: a driver that refuses every boot (tests/api/offline.py), so
sessions exist and fail at once. Half the cases address a real session (its id put in the path), so the 200 bodies
of the session routes are checked too, not only their 404s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hearth.config import Settings
from hearth.serving.local import free_port
from tests.api.offline import AUTH, asgi, offline_app

EXAMPLES = 150  # per operation and generation mode: a few hundred cases per operation
CHECKS = [  # not_a_server_error is left out: it fails every 5xx, also a declared 503 (/ready); 500s are counted
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
SLOW = {"/api/diagnostics", "/api/diagnostics/{session_id}"}  # the doctor walks the path: fewer cases


@dataclass
class Tally:
    seen: Counter[str] = field(default_factory=Counter)  # "METHOD path status" → cases
    failures: Counter[str] = field(default_factory=Counter)  # "METHOD path status: check" → cases
    examples: dict[str, str] = field(default_factory=dict)  # the first case of each failure
    server_errors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # "METHOD path" → seconds


def run_operation(op: Any, mode: GenerationMode, base: str, session_id: str, tally: Tally) -> None:
    """Up to EXAMPLES cases of one operation (blocking: a worker thread while the app serves)."""
    http = requests.Session()

    @settings(
        max_examples=EXAMPLES // 5 if op.path in SLOW else EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode), real=st.booleans(), keyless=st.integers(0, 9))
    def run(case: Any, real: bool, keyless: int) -> None:
        if real and "session_id" in (case.path_parameters or {}):
            case.path_parameters["session_id"] = session_id
        headers = {} if keyless == 0 else AUTH  # one in ten without the API key
        response = case.call(base_url=base, session=http, headers=headers, timeout=60)
        tally.seen[f"{op.method.upper()} {op.path} {response.status_code}"] += 1
        if response.status_code == 500:  # other 5xx are declared answers (a store outage, a failed hop, /ready)
            tally.server_errors += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                what = f"{op.method.upper()} {op.path} → {response.status_code}: {failure.title}"
                tally.failures[what] += 1
                tally.examples.setdefault(
                    what, f"{failure.message[:300]} | {response.text[:300]} | {case.as_curl_command()[:300]}"
                )

    t0 = time.monotonic()
    try:
        run()
    except Unsatisfiable:  # nothing invalid can be made for it (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE, op.label
    finally:
        http.close()
        label = f"{op.method.upper()} {op.path}"
        tally.seconds[label] = tally.seconds.get(label, 0.0) + time.monotonic() - t0


def run_schema(schema: dict[str, Any], base: str, session_id: str) -> tuple[Tally, int]:
    tally, operations = Tally(), 0
    for result in schemathesis.openapi.from_dict(schema).get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the app's own schema must load
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run_operation(result.ok(), mode, base, session_id, tally)
    return tally, operations


async def test_every_operation_keeps_the_openapi_contract(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    s = make_settings(HEARTH_RATE_LIMIT="0", MAX_SESSIONS_PER_USER="1000", MAX_BROWSER_SESSIONS="1000")
    async with offline_app(s) as off:
        async with asgi(off.app) as http:
            schema = (await http.get("/openapi.json")).json()
        port = free_port()
        config = uvicorn.Config(off.app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            for _ in range(400):
                if server.started or serving.done():
                    break
                await asyncio.sleep(0.05)
            assert server.started
            t0 = time.monotonic()
            tally, operations = await asyncio.to_thread(run_schema, schema, f"http://127.0.0.1:{port}", off.session_id)
            took = time.monotonic() - t0
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 30)
        total = sum(tally.seen.values())
        print(f"\nschemathesis: {operations} operations, {total} cases in {took:.0f}s")
        for line in sorted(tally.seen):
            print(f"  {line}: {tally.seen[line]}")
        for what, seconds in sorted(tally.seconds.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  slowest: {what} {seconds:.1f}s")
        for what, n in sorted(tally.failures.items()):
            print(f"  FAILURE {what} ×{n}: {tally.examples[what]}")
        mismatches = sum(tally.failures.values())
        print(f"{tally.server_errors} server errors (500), {mismatches} contract mismatches")
        assert tally.server_errors == 0 and mismatches == 0, sorted(tally.failures)
        per_op: Counter[str] = Counter()
        for line, n in tally.seen.items():
            per_op[line.rsplit(" ", 1)[0]] += n
        assert len(per_op) == operations, sorted(per_op)  # every operation answered
        thin = {op: n for op, n in per_op.items() if n < (EXAMPLES // 5 if op.split(" ")[1] in SLOW else EXAMPLES)}
        print(f"operations with fewer distinct cases than asked (a small input space): {thin}")
        tracebacks = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info]
        assert tracebacks == [], tracebacks[:5]


async def test_every_route_declares_the_answers_its_handlers_can_give(make_settings: Callable[..., Settings]) -> None:
    """What fuzzing rarely reaches is declared all the same: every /api/* operation the limits middleware's answers
    (400, 413, 422, 429) and a store outage's 503; every session-scoped one 404 and 421 (another node's session);
    every one behind the API key 401. Each error answer's body is ErrorOut (422: ValidationErrorOut)."""
    s = make_settings()
    async with offline_app(s) as off, asgi(off.app) as http:
        schema = (await http.get("/openapi.json")).json()
    missing = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            codes = {int(c) for c in op["responses"]}
            want = {400, 413, 422, 429, 503} if path.startswith("/api/") else set()
            if path.startswith("/api/auth/session/{session_id}"):
                want |= {404, 421}
            if path.startswith("/api/"):
                want |= {401}  # an API key, or a viewer token (the viewer's routes)
            if want - codes:
                missing.append(f"{method.upper()} {path}: {sorted(want - codes)}")
            for code, answer in op["responses"].items():
                refs = [c.get("schema", {}).get("$ref", "") for c in answer.get("content", {}).values()]
                if int(code) >= 400 and path.startswith("/api/") and refs and not any(r for r in refs):
                    missing.append(f"{method.upper()} {path} {code}: no body schema")
                if code == "422" and not any(r.endswith("/ValidationErrorOut") for r in refs):
                    missing.append(f"{method.upper()} {path} 422: not ValidationErrorOut ({refs})")
    print(f"\n{sum(len(v) for v in schema['paths'].values())} operations checked")
    assert missing == [], "\n".join(missing)
