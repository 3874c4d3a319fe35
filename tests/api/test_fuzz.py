"""Hostile input against a live controller.

1. schemathesis generates requests for every operation of the app's own OpenAPI schema (valid and invalid ones,
   derandomized, a bounded number per operation) with the API key: no response may be a 5xx. Sessions it manages
   to start are cancelled at once, so it runs with real sandboxes and leaves none.
2. Malformed WebSocket frames (unmasked, reserved opcodes and bits, invalid UTF-8, fragmented control frames, a
   2^63-byte length, garbage) and garbage RFB (text frames, random bytes instead of the version, a truncated
   ClientCutText announcing 2 GiB, 1 MiB of junk) from viewers: each connection ends with a close code — never a
   hang or a crash; what the gateway can judge itself (an unknown message type, an unannounced extension) closes
   4403 before it reaches the VNC server — and afterwards the controller still serves /health and a fresh viewer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hearth.config import Settings
from hearth.rfb.client import handshake
from hearth.rfb.ws import WsByteStream, first_frame
from tests import rawws
from tests.conftest import running_controller
from tests.live import leaks, scaled, start_ready
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]
EXAMPLES = scaled(30)  # per operation and generation mode
CONTRACT = [status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class Tally:
    seen: Counter[str] = field(default_factory=Counter)  # "METHOD path status" → requests
    server_errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)  # answers the OpenAPI does not declare
    started: int = 0  # sessions started (and cancelled at once)


def fuzz_operation(op: Any, mode: GenerationMode, base: str, headers: dict[str, str], tally: Tally) -> None:
    """Up to EXAMPLES generated requests for one operation (blocking)."""

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        for _ in range(20):
            response = case.call(base_url=base, headers=headers, timeout=60)
            if response.status_code != 429 or "rate limit" not in response.text:
                break
            time.sleep(float(response.headers.get("retry-after", ["1"])[0]))  # as the limiter says
        code = response.status_code
        tally.seen[f"{op.label} {code}"] += 1
        if code >= 500:
            tally.server_errors.append(f"{op.label} → {code}: {response.text[:300]} ({case.as_curl_command()})")
        try:  # a live controller's answers keep the contract too
            case.validate_response(response, checks=CONTRACT, headers=headers)
        except FailureGroup as group:
            tally.mismatches += [f"{op.label} → {code}: {f.title}: {f.message[:200]}" for f in group.exceptions]
        if code == 201 and op.path == "/api/auth/start":
            tally.started += 1
            sid = response.json()["session_id"]
            r = httpx.post(f"{base}/api/auth/session/{sid}/cancel", headers=headers, timeout=60)
            assert r.status_code == 200, r.text

    try:
        run()
    except Unsatisfiable:  # nothing invalid can be made for it (e.g. no parameters at all)
        assert mode is GenerationMode.NEGATIVE, op.label


def fuzz_schema(base: str, headers: dict[str, str], schema: dict[str, Any]) -> Tally:
    """Every operation, valid and invalid cases (blocking: on a worker thread while the controller serves)."""
    tally = Tally()
    for result in schemathesis.openapi.from_dict(schema).get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the app's own schema must load
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(result.ok(), mode, base, headers, tally)
    return tally


async def test_openapi_fuzz_never_gets_a_5xx(make_settings: Callable[..., Settings]) -> None:
    # The rate limiter stays on (the fuzzer waits out 429s as told), only with more room than the default.
    faster = {"HEARTH_RATE_LIMIT": "200", "HEARTH_RATE_BURST": "200"} if "rate_limit" in Settings.model_fields else {}
    s = make_settings(HEARTH_CHROMIUM="false", MAX_SESSIONS_PER_USER="4", **faster)
    async with running_controller(s) as ctl, httpx.AsyncClient(base_url=ctl.base_url, timeout=30) as http:
        schema = (await http.get("/openapi.json")).json()
        operations = sum(len(v) for v in schema["paths"].values())
        tally = await asyncio.to_thread(fuzz_schema, ctl.base_url, ctl.headers, schema)
        seen, errors, started = tally.seen, tally.server_errors, tally.started
        total = sum(seen.values())
        print(f"\nfuzz: {operations} operations, {total} requests, {started} sessions started and cancelled")
        for key in sorted(seen):
            print(f"  {key}: {seen[key]}")
        assert errors == [], "\n".join(errors[:10])
        assert tally.mismatches == [], "\n".join(tally.mismatches[:10])
        assert total >= operations * 2
        assert (await http.get("/health")).json()["ok"] is True
        assert await ctl.ctl.service.records.list_active() == []
        found = await leaks(ctl, set())
        assert (found.netns, found.links, found.dirs, found.leases) == ([], [], [], 0), found
        print(f"CLI sandbox locks held for unknown users: {len(ctl.ctl.clis._locks)}")
        assert ctl.ctl.clis._locks == {}


# ---- hostile viewers --------------------------------------------------------------------------------------

MALFORMED_FRAMES: dict[str, list[bytes]] = {
    "unmasked client frame": [rawws.frame(rawws.OP_BINARY, b"RFB 003.008\n", mask=False)],
    "reserved opcode": [rawws.frame(3, b"xx")],
    "reserved bits": [rawws.frame(rawws.OP_BINARY, b"abc", rsv=0x40)],
    "invalid UTF-8 text": [rawws.frame(rawws.OP_TEXT, b"\xff\xfe\xfd")],
    "fragmented ping": [rawws.frame(rawws.OP_PING, b"x", fin=False)],
    "continuation first": [rawws.frame(rawws.OP_CONT, b"abc")],
    "2^63 byte frame": [rawws.frame(rawws.OP_BINARY, b"", length=(1 << 63) - 1)],
    "close code 999": [rawws.frame(rawws.OP_CLOSE, struct.pack(">H", 999))],
    "random bytes": [random.Random(1).randbytes(4096)],
}


async def close_after(url: str, payloads: list[bytes | str], rfb_handshake: bool) -> tuple[int | None, str]:
    """Connect (optionally finish RFB), send `payloads`, and read until the server closes (bounded)."""
    async with connect(url, subprotocols=["binary"], max_size=None, ping_interval=None) as ws:  # type: ignore[list-item]
        if rfb_handshake:
            stream = WsByteStream(ws, 30)
            await handshake(stream.read, stream.write)
        else:
            await asyncio.wait_for(ws.recv(), 30)  # the server's version banner
        for p in payloads:
            try:
                await ws.send(p)
            except ConnectionClosed:
                break
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


async def test_malformed_frames_and_garbage_rfb_get_a_clean_close(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    s = make_settings(HEARTH_CHROMIUM="false", HEARTH_WS_PING_INTERVAL="2")
    async with (
        running_controller(s) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        live = await start_ready(http, s, "hostile")
        url = live.ws_url(ctl)
        host, port = s.listen_host_port
        path = url.split(str(port), 1)[1]
        gauge = ctl.ctl.viewers

        outcomes: dict[str, tuple[int | None, str]] = {}
        for name, frames in MALFORMED_FRAMES.items():
            got = await asyncio.to_thread(rawws.exchange, host, port, path, frames, 30.0)
            outcomes[f"ws: {name}"] = (got.close_code, got.close_reason)
        # A frame cut off in the middle, then silence: the gateway's pings go unanswered and it hangs up.
        got = await asyncio.to_thread(rawws.exchange, host, port, path, [rawws.frame(2, b"abcdef")[:5]], 30.0)
        outcomes["ws: truncated frame, then silence"] = (got.close_code, got.close_reason)

        junk = random.Random(2).randbytes(1 << 20)
        rfb_cases: dict[str, tuple[list[bytes | str], bool]] = {
            "text frames instead of binary": (["hello", "RFB 003.008\n", "\u2603" * 100], False),
            "random bytes instead of the version": ([os.urandom(12)], False),
            "1 MiB of junk before the handshake": ([junk], False),
            "1 MiB of junk after the handshake": ([junk], True),
            "truncated ClientCutText of 2 GiB": ([struct.pack(">BxxxI", 6, 0x7FFFFFFF) + b"abc"], True),
            "extended ClientCutText of -2^31": ([struct.pack(">Bxxxi", 6, -(2**31)) + b"abc"], True),
        }
        for name, (payloads, hs) in rfb_cases.items():
            outcomes[f"rfb: {name}"] = await close_after(url, payloads, hs)

        print()
        for name, (code, reason) in outcomes.items():
            print(f"  {name:45s} → close {code} {reason!r}")
        assert all(code is not None for code, _ in outcomes.values()), outcomes
        for name, (code, _) in outcomes.items():
            if name.startswith("rfb:") and "after the handshake" not in name and "ClientCutText" not in name:
                assert code == 4400, (name, code)  # the gateway terminates the handshake: not RFB → 4400
            elif name in ("rfb: 1 MiB of junk after the handshake", "rfb: extended ClientCutText of -2^31"):
                assert code == 4403, (name, code)  # the gateway frames every message: unknown / unannounced → 4403
            elif name.startswith("rfb:"):  # the VNC server refused the garbage: a normal end, not "unreachable"
                assert code == 1000, (name, code)
            else:
                assert code in (1002, 1007, 1009, 1011), (name, code)

        await eventually(lambda: gauge.count(live.session_id) == 0, 15, "no hostile viewer counted as connected")
        assert (await http.get("/health")).json()["ok"] is True
        assert (await http.get(f"/api/auth/session/{live.session_id}")).json()["status"] == "ready"
        frame = await first_frame(url, timeout=60)
        assert frame.init.width == 1280 and frame.rects
        print(f"after {len(outcomes)} hostile viewers: /health ok, session ready, a fresh viewer got its first frame")
        errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []
