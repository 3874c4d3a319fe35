"""The bounded waits of the tests: `eventually(probe, timeout, what)` polls until the probe has an answer, and
`wait_session(http, sid, until, what)` waits for a session through its server-sent status stream; both fail naming
`what` and the last thing they saw. `eventually_sync` is `eventually` for a test that runs without an event loop. Never a sleep as synchronisation, never an assertion on wall-clock time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

import httpx

T = TypeVar("T")

# What a probe may raise while the thing it looks at is not there yet (a port not listening, a partial read, a file
# half written, a check that does not hold yet); anything else is a bug in the test and propagates.
NOT_YET: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    ValueError,
    AssertionError,
)


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | bool | None]], timeout: float, what: str, *, interval: float = 0.05
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T | bool | None], timeout: float, what: str, *, interval: float = 0.05
) -> T: ...


async def eventually(
    probe: Callable[[], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
) -> object:
    """Call `probe` (a coroutine function, or a plain function that looks without waiting) until it returns an
    answer — anything but None or False — without raising one of `NOT_YET`; returns that answer. Raises
    AssertionError naming `what` and the last observation after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = probe()
            if inspect.isawaitable(got):
                got = await got
            if got is not None and got is not False:
                return got
            last = got
        except NOT_YET as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T | bool | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
) -> T:
    """`eventually` for a test without an event loop (a thread sleeps between the calls of `probe`): the same
    answers, the same `NOT_YET`, the same message."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = probe()
            if got is not None and got is not False:
                return got  # type: ignore[return-value]  # None and False excluded above
            last = got
        except NOT_YET as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)


TERMINAL = ("completed", "failed", "cancelled", "expired")
Body = dict[str, object]


def started(body: Body) -> bool:
    """The default of `wait_session`: the session is past `queued` and `starting` (ready, or ended)."""
    return body["status"] not in ("queued", "starting")


def retry_after(r: httpx.Response) -> float:
    """The pause a 429 asks for (its Retry-After, else 1 s)."""
    return float(r.headers.get("retry-after", "1"))


async def polite(call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """`call()` again while the API's rate limit refuses it (429), after the pause each refusal asks for."""
    while (r := await call()).status_code == 429:
        await asyncio.sleep(retry_after(r))
    return r


async def wait_session(
    http: httpx.AsyncClient,
    sid: str,
    until: Callable[[Body], bool] = started,
    what: str = "the session past starting",
    timeout: float = 120,
    *,
    token: str | None = None,
) -> Body:
    """The one wait for a session: until `until(body)` holds or the session ended (`body` is GET
    /api/auth/session/{sid}, as the API key sees it); returns that body. Told, not polled: it listens to the session's
    server-sent status stream (GET …/status, a control token: `token`, or one it asks for) and reads the body again
    at each event — or keepalive. Raises AssertionError naming `what` and the last body after `timeout` seconds.

    Like an open sign-in page, the stream counts as activity (the idle timer): a test of idle expiry waits with
    `eventually` instead."""
    last: Body = {}

    async def get() -> Body:
        nonlocal last
        r = await polite(lambda: http.get(f"/api/auth/session/{sid}"))
        assert r.status_code == 200, f"GET session {sid}: {r.status_code} {r.text}"
        last = r.json()
        return last

    def done(body: Body) -> bool:
        return until(body) or body["status"] in TERMINAL

    async def run() -> Body:
        nonlocal token
        if token is None:
            r = await polite(lambda: http.post(f"/api/auth/session/{sid}/token", json={"scope": "control"}))
            assert r.status_code == 200, f"a token for session {sid}: {r.status_code} {r.text}"
            token = str(r.json()["viewer_token"])
        # a read timeout above the stream's 15 s keepalive, whatever the client's own (the whole wait is bounded)
        url, params = f"/api/auth/session/{sid}/status", {"token": token}
        while True:
            async with http.stream("GET", url, params=params, timeout=60) as stream:
                if stream.status_code == 429:  # rate limited (many sessions in a row): do as told
                    pause = retry_after(stream)
                else:
                    return await follow(stream)
            await asyncio.sleep(pause)

    async def follow(stream: httpx.Response) -> Body:
        assert stream.status_code == 200, f"status stream of {sid}: {stream.status_code}"
        body = await get()  # after the stream opened: no change can fall between this read and its events
        if done(body):
            return body
        async for line in stream.aiter_lines():
            if line.startswith(("data:", ": keepalive")):
                body = await get()
                if done(body):
                    return body
        return await get()  # the stream ends with the session

    try:
        return await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})") from None
