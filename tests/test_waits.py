"""tests/waits.py: the answer is returned, transient failures are retried, the timeout names what and the last
observation, and a probe's own bug is not swallowed; wait_session reads the session at each event of its status
stream (an API stood in for by httpx's MockTransport)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.waits import eventually, eventually_sync, wait_session


async def test_returns_the_first_answer_after_transient_failures() -> None:
    seen: list[int] = []

    async def probe() -> int | None:
        seen.append(len(seen))
        if len(seen) == 1:
            raise ConnectionRefusedError("not listening yet")
        if len(seen) == 2:
            return None
        return 42

    assert await eventually(probe, 30, "the answer", interval=0.001) == 42
    assert len(seen) == 3


async def test_false_is_not_an_answer_and_the_timeout_names_what_and_the_last_observation() -> None:
    async def probe() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"chromium running not reached within 0.05s \(last: False\)"):
        await eventually(probe, 0.05, "chromium running", interval=0.001)


async def test_a_plain_function_is_a_probe_too() -> None:
    seen: list[int] = []

    def probe() -> bool:
        seen.append(len(seen))
        return len(seen) == 3

    assert await eventually(probe, 30, "the third look", interval=0.001) is True
    assert len(seen) == 3


async def test_a_bug_in_the_probe_propagates() -> None:
    async def probe() -> int:
        raise KeyError("typo")

    with pytest.raises(KeyError):
        await eventually(probe, 30, "anything")


def test_the_sync_sibling_has_the_same_answers_retries_and_message() -> None:
    seen: list[int] = []

    def probe() -> int | None:
        seen.append(len(seen))
        if len(seen) == 1:
            raise ConnectionRefusedError("not listening yet")
        return None if len(seen) == 2 else 42

    assert eventually_sync(probe, 30, "the answer", interval=0.001) == 42
    assert len(seen) == 3
    with pytest.raises(AssertionError, match=r"the agent listening not reached within 0.05s \(last: False\)"):
        eventually_sync(lambda: False, 0.05, "the agent listening", interval=0.001)

    def buggy() -> int:
        raise KeyError("typo")

    with pytest.raises(KeyError):
        eventually_sync(buggy, 30, "anything")


def fake_api(statuses: list[str], events: int) -> httpx.AsyncClient:
    """An API whose session answers `statuses` one GET after another (then the last), with a status stream of
    `events` events (then it ends)."""
    asked: list[str] = []

    async def stream() -> AsyncIterator[bytes]:
        for i in range(events):
            yield f'data: {{"event": {i}}}\n\n'.encode()

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"viewer_token": "t"})
        if request.url.path.endswith("/status"):
            assert request.url.params["token"] == "t"
            return httpx.Response(200, content=stream(), headers={"content-type": "text/event-stream"})
        n = sum(a.startswith("GET") and not a.endswith("/status") for a in asked)
        return httpx.Response(200, json={"status": statuses[min(n, len(statuses)) - 1]})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://api")


async def test_wait_session_reads_the_session_at_each_event_until_the_condition_holds() -> None:
    async with fake_api(["starting", "starting", "ready", "completed"], events=5) as http:
        body = await wait_session(http, "s1")  # default: past starting
        assert body == {"status": "ready"}


async def test_wait_session_returns_at_the_end_and_names_what_it_waited_for() -> None:
    async with fake_api(["awaiting_user", "failed"], events=1) as http:
        body = await wait_session(http, "s1", lambda b: b["status"] == "completed", "completion")
        assert body == {"status": "failed"}  # ended: returned, for the test to assert on
    async with fake_api(["starting"], events=0) as http:  # a stream that ends with the session still starting
        assert (await wait_session(http, "s1", lambda b: False, "x"))["status"] == "starting"


async def test_wait_session_times_out_naming_what_and_the_last_body() -> None:
    async def forever() -> AsyncIterator[bytes]:
        yield b": keepalive\n\n"
        await asyncio.sleep(3600)
        yield b""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"viewer_token": "t"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, content=forever())
        return httpx.Response(200, json={"status": "starting"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://api") as http:
        with pytest.raises(
            AssertionError, match=r"the boot not reached within 0.2s \(last: \{'status': 'starting'\}\)"
        ):
            await wait_session(http, "s1", what="the boot", timeout=0.2)
