"""Agent → controller pushes (the redaction of the text in them: hearth_agent/contract/redaction.py).

`POST {callback}/agent/v1/sessions/{session_id}/events|credentials` with `Authorization: Bearer <agent secret>`,
sent in order by one thread, each retried with back-off (connection errors, 5xx, 408, 429) within a time budget.
Bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future
from typing import Any

from hearth_agent.contract import routes

log = logging.getLogger("hearth_agent")


class PushFailed(Exception):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # never carry the bearer secret to another location


PUSH_BUDGET = 120.0  # seconds a push is retried: long enough to outlast a controller restart (sandboxes survive it)


class Outbox:
    """Pushes to the controller, one at a time, in submission order."""

    def __init__(self, callback: str, session_id: str, secret: str, attempt_timeout: float = 10.0) -> None:
        self.base = f"{callback.rstrip('/')}{routes.PUSH_PREFIX}/{urllib.parse.quote(session_id, safe='')}"
        self._secret = secret
        self._timeout = attempt_timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._queue: queue.Queue[tuple[str, dict[str, Any], float, Future[None]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def event(self, event: str, detail: str = "", budget: float = PUSH_BUDGET) -> Future[None]:
        log.info("login event", extra={"event": event})
        return self.submit("events", {"event": event, "detail": detail}, budget)

    def submit(self, kind: str, body: dict[str, Any], budget: float) -> Future[None]:
        fut: Future[None] = Future()
        self._queue.put((kind, body, budget, fut))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="controller-push", daemon=True)
                self._thread.start()
        return fut

    def _run(self) -> None:
        while True:
            kind, body, budget, fut = self._queue.get()
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
        while True:
            req = urllib.request.Request(
                f"{self.base}/{kind}",
                data=data,
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._secret}"},
            )
            try:
                with self._opener.open(req, timeout=self._timeout) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError as exc:
                exc.close()
                last = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code not in (408, 429):
                    raise PushFailed(f"controller refused the {kind} push: {last}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                last = f"{type(reason).__name__}: {reason}"
            if time.monotonic() + delay > deadline:
                raise PushFailed(f"controller unreachable for the {kind} push ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
