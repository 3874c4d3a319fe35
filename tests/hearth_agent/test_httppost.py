"""The agent's pushes to the controller on a plain socket (hearth_agent/httppost.py through controller.Outbox): what
urllib.request did for them — no redirect followed, retries on 5xx/408/429 and on no answer, refusals named."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from hearth_agent import httppost
from hearth_agent.controller import Outbox, PushFailed

SECRET = "s3cret-agent-key-0123456789abcdef"
Answer = Callable[[bytes], bytes]


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes], list[Answer]]]:
    """A loopback server: each connection gets the next answer of `answers` (the last one repeats); the requests
    it read are in `seen`."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []
    answers: list[Answer] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k == b"Content-Length"
                )
                while len(body) < length:
                    body += conn.recv(4096)
                seen.append(data)
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                conn.sendall(answer(data))

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], seen, answers
    listener.close()


def status(code: int, extra: str = "") -> Answer:
    return lambda _req: f"HTTP/1.1 {code} X\r\n{extra}Content-Length: 2\r\n\r\n{{}}".encode()


def test_a_push_is_one_post_with_the_bearer_and_a_json_body(server: tuple[int, list[bytes], list[Answer]]) -> None:
    port, seen, answers = server
    answers.append(status(200))
    Outbox(f"http://127.0.0.1:{port}/", "sess 1", SECRET).post("events", {"event": "login_started"}, 5)
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /agent/v1/sessions/sess%201/events HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}" in lines and f"Authorization: Bearer {SECRET}" in lines
    assert "Connection: close" in lines and "Content-Type: application/json" in lines
    assert body == b'{"event": "login_started"}'


def test_5xx_is_retried_a_redirect_is_refused_not_followed(server: tuple[int, list[bytes], list[Answer]]) -> None:
    port, seen, answers = server
    answers += [status(503), lambda _r: b"HTTP/1.1 100 Continue\r\n\r\n" + status(204)(_r)]
    Outbox(f"http://127.0.0.1:{port}", "s", SECRET).post("events", {}, 10)
    assert len(seen) == 2  # the 503 was retried; the interim 100 skipped
    answers[:] = [status(302, f"Location: http://127.0.0.1:{port}/elsewhere\r\n")]
    with pytest.raises(PushFailed, match="controller refused the credentials push: HTTP 302"):
        Outbox(f"http://127.0.0.1:{port}", "s", SECRET).post("credentials", {}, 10)
    assert len(seen) == 3  # one request: the Location was not visited
    answers[:] = [status(401)]
    with pytest.raises(PushFailed, match="HTTP 401"):
        Outbox(f"http://127.0.0.1:{port}", "s", SECRET).post("events", {}, 10)


def test_no_answer_is_retried_within_the_budget_and_named(server: tuple[int, list[bytes], list[Answer]]) -> None:
    port, seen, answers = server
    answers.append(lambda _r: b"SSH-2.0-not-http\r\n\r\n")
    with pytest.raises(PushFailed, match=r"unreachable for the events push \(BadAnswer: not an HTTP answer"):
        Outbox(f"http://127.0.0.1:{port}", "s", SECRET).post("events", {}, 0.3)
    assert len(seen) >= 2
    closed = socket.create_server(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    with pytest.raises(PushFailed, match=r"\(ConnectionRefusedError: \[Errno 111\] Connection refused\)"):
        Outbox(f"http://127.0.0.1:{free}", "s", SECRET).post("events", {}, 0.1)


def test_what_cannot_be_sent_is_refused_before_a_connection() -> None:
    with pytest.raises(PushFailed, match="not an http"):
        Outbox("ftp://127.0.0.1:21", "s", SECRET).post("events", {}, 1)
    with pytest.raises(ValueError, match="would split"):
        httppost.post("http", "127.0.0.1", 9, "/x", {"Authorization": "Bearer a\r\nX: y"}, b"", 1)


def test_pushes_go_in_order_and_each_says_what_became_of_it(server: tuple[int, list[bytes], list[Answer]]) -> None:
    port, seen, answers = server
    answers += [status(200), status(200), status(403), status(200)]
    outbox = Outbox(f"http://127.0.0.1:{port}", "s", SECRET)
    pushed = [outbox.event(f"e{i}", budget=5) for i in range(4)]
    pushed[3].result(timeout=30)
    pushed[0].result(timeout=0)  # delivered before the last one
    with pytest.raises(PushFailed, match="HTTP 403"):
        pushed[2].result(timeout=0)
    assert [b'"event": "e%d"' % i in seen[i] for i in range(4)] == [True] * 4
    closed = socket.create_server(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    waiting = Outbox(f"http://127.0.0.1:{free}", "s", SECRET).event("late", budget=5)
    with pytest.raises(TimeoutError):
        waiting.result(timeout=0.01)  # still being retried
    assert not waiting.done()
