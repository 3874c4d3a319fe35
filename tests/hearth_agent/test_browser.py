"""POST /v1/browser under load and without the secret: 100 concurrent callers on the agent's real HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from hearth_agent.__main__ import build_server
from hearth_agent.supervisor import Supervisor
from tests.hearth_agent.test_agent import SECRET, bearer, config, request


@pytest.fixture
def waiting_browser() -> Iterator[tuple[int, Supervisor]]:
    """An agent whose Chromium waits for its turn; its supervisor is never run (no processes start)."""
    cfg = config(browser_on_request=True)
    sup = Supervisor(cfg)
    server = build_server(cfg, sup)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield cfg.agent_port, sup
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_hundred_callers_without_the_secret_start_nothing(waiting_browser: tuple[int, Supervisor]) -> None:
    """What the sandbox's own user can send (it has no secret): refused, the browser still waits its turn."""
    port, sup = waiting_browser
    with ThreadPoolExecutor(max_workers=100) as pool:
        codes = list(
            pool.map(lambda i: request(port, "POST", "/v1/browser", b"{}", bearer(f"guess-{i}"))[0], range(100))
        )
    assert codes == [401] * 100
    assert sup.health()["services"]["chromium"]["state"] == "waiting"


def test_a_hundred_concurrent_requests_start_the_browser_once(waiting_browser: tuple[int, Supervisor]) -> None:
    port, sup = waiting_browser
    sup.request_stop("test: answer at once instead of waiting for a window")  # no supervisor thread runs here
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(lambda _: request(port, "POST", "/v1/browser", b"{}", bearer(SECRET)), range(100)))
    assert {status for status, _ in answers} == {200}
    assert sum(1 for _, body in answers if body["started"]) == 1, json.dumps(answers[:3])


def test_a_shown_browser_is_not_asked_about_again_until_it_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm-pool sandbox's browser was seen shown before its hand-over: asked again (POST /v1/browser at READY), the
    agent answers from what it saw and starts no xprop, the display's client, just when the first frame is drawn."""
    import hearth_agent.supervisor as supervisor

    looks: list[str] = []

    def window_listed(display: str) -> bool:
        looks.append(display)
        return True

    monkeypatch.setattr(supervisor, "window_listed", window_listed)
    sup = Supervisor(config())
    chromium = sup.services["chromium"]
    chromium.state, chromium.pid = "starting", 101
    assert sup.browser_shown() is True and len(looks) == 1  # not running yet: asked, not remembered
    assert sup.browser_shown() is True and len(looks) == 2
    chromium.state = "running"
    assert sup.browser_shown() is True and len(looks) == 3
    assert sup.browser_shown() is True and len(looks) == 3  # the same process: remembered
    chromium.pid = 102  # restarted: its window must be seen again
    assert sup.browser_shown() is True and len(looks) == 4
    assert sup.browser_shown() is True and len(looks) == 4
