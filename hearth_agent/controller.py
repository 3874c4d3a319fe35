"""Agent → controller pushes (the redaction of the text in them: hearth_agent/contract/redaction.py).

`POST {callback}/agent/v1/sessions/{session_id}/events|credentials` with `Authorization: Bearer <agent secret>`,
sent in order by one thread, each retried with back-off (connection errors, 5xx, 408, 429) within a time budget.
Bodies are never logged. No proxy, no redirect followed (the bearer secret never goes to another location): one POST
on a plain socket (hearth_agent/httppost.py), not urllib.request (≈2.7 MiB of every agent).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections import deque
from typing import Any

from hearth_agent import httppost
from hearth_agent.contract import routes

log = logging.getLogger("hearth_agent")


class PushFailed(Exception):
    pass


class Pushed:
    """What became of one push: `result(timeout)` returns once it was delivered and raises what stopped it (the part
    of concurrent.futures.Future the agent uses; that module with queue is ≈0.2 MiB of every agent, issue 25)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None

    def set_result(self, _result: None) -> None:
        self._done.set()

    def set_exception(self, exc: BaseException) -> None:
        self._error = exc
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> None:
        if not self._done.wait(timeout):
            raise TimeoutError("the push is still being tried")
        if self._error is not None:
            raise self._error


PUSH_BUDGET = 120.0  # seconds a push is retried: long enough to outlast a controller restart (sandboxes survive it)


class Outbox:
    """Pushes to the controller, one at a time, in submission order."""

    def __init__(self, callback: str, session_id: str, secret: str, attempt_timeout: float = 10.0) -> None:
        self.base = f"{callback.rstrip('/')}{routes.PUSH_PREFIX}/{urllib.parse.quote(session_id, safe='')}"
        self._secret = secret
        self._timeout = attempt_timeout
        self._pending: deque[tuple[str, dict[str, Any], float, Pushed]] = deque()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)

    def event(self, event: str, detail: str = "", budget: float = PUSH_BUDGET) -> Pushed:
        log.info("login event", extra={"event": event})
        return self.submit("events", {"event": event, "detail": detail}, budget)

    def submit(self, kind: str, body: dict[str, Any], budget: float) -> Pushed:
        fut = Pushed()
        with self._lock:
            self._pending.append((kind, body, budget, fut))
            self._ready.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="controller-push", daemon=True)
                self._thread.start()
        return fut

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                kind, body, budget, fut = self._pending.popleft()
            try:
                self.post(kind, body, budget)
            except Exception as exc:
                name = body.get("event", kind)
                log.warning("push to the controller failed", extra={"event": name, "error": str(exc)})
                fut.set_exception(exc)
            else:
                fut.set_result(None)

    def post(self, kind: str, body: dict[str, Any], budget: float) -> None:
        """POST with retries until `budget` seconds are spent; raises PushFailed naming the last error."""
        data = json.dumps(body).encode()
        deadline = time.monotonic() + budget
        delay = 0.25
        url = urllib.parse.urlsplit(f"{self.base}/{kind}")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._secret}"}
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:
            port = 0
        if url.scheme not in ("http", "https") or not url.hostname or not port:
            raise PushFailed(f"the controller callback {url.scheme}://{url.netloc} is not an http(s) URL")
        while True:
            try:
                status = httppost.post(url.scheme, url.hostname, port, url.path, headers, data, self._timeout)
                if 200 <= status < 300:
                    return
                last = f"HTTP {status}"
                if status < 500 and status not in (408, 429):  # a 3xx too: never followed
                    raise PushFailed(f"controller refused the {kind} push: {last}") from None
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + delay > deadline:
                raise PushFailed(f"controller unreachable for the {kind} push ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
