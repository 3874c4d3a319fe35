"""The agent's prompt runner with the real example CLI and IdP over loopback, pushing to a real HTTP receiver
standing in for the controller's callback endpoint (the netns end-to-end path is tests/prompts/test_e2e.py)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hearth.providers.registry import load
from hearth_agent.proctree import descendants
from hearth_agent.promptrun import Prompts
from hearth_example.idp import IdpServer, IdpState

ROOT = str(Path(__file__).resolve().parents[2])
SECRET = "s" * 24


@dataclass
class Receiver:
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def events(self, pid: str) -> list[dict[str, Any]]:
        with self.cond:
            return [e for b in self.bodies if b["prompt_id"] == pid for e in b["events"]]

    def final(self, pid: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                done = [b for b in self.bodies if b["prompt_id"] == pid and "final" in b]
                if done:
                    return done[0]
                left = deadline - time.monotonic()
                assert left > 0, f"no final batch for {pid}"
                self.cond.wait(left)

    def wait_for(self, pid: str, kind: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(e["type"] == kind for b in self.bodies if b["prompt_id"] == pid for e in b["events"]):
                left = deadline - time.monotonic()
                assert left > 0, f"no {kind} event for {pid}"
                self.cond.wait(left)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, IdpState, Receiver]]:
    state = IdpState()
    idp = IdpServer(("127.0.0.1", 0), state)
    rx = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            assert self.headers["Authorization"] == f"Bearer {SECRET}"
            assert self.path == "/agent/v1/sessions/cli-t/prompt"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with rx.cond:
                rx.bodies.append(body)
                rx.cond.notify_all()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    cb = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    for s in (idp, cb):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    rx.url = f"http://127.0.0.1:{cb.server_address[1]}"
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT
    try:
        yield f"http://127.0.0.1:{idp.server_address[1]}", state, rx
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
        for s in (idp, cb):
            s.shutdown()
            s.server_close()


@pytest.fixture
def prompts(world: tuple[str, IdpState, Receiver], tmp_path: Path) -> Prompts:
    _issuer, state, rx = world
    (tmp_path / ".example").mkdir()
    (tmp_path / ".example" / "credentials.json").write_text(json.dumps({"issuer": _issuer, **state.issue()}))
    return Prompts({"callback": rx.url, "session_id": "cli-t", "secret": SECRET}, str(tmp_path))


def start(p: Prompts, rid: str, prompt: str, **extra: Any) -> None:
    doc = load()["example"].agent_document()
    body = {"id": rid, "provider": doc, "prompt": prompt, "permissions": "read_only", **extra}
    assert p.start(body) == (202, {"started": True})


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "text")


def test_answer_streams_in_order_with_done_and_conversation(prompts: Prompts, world: Any) -> None:
    rx: Receiver = world[2]
    start(prompts, "p1", "hi\x00\x07 there", raw=True)
    final = rx.final("p1")
    evs = rx.events("p1")
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert text_of(evs) == "You said: hi\x00\x07 there (turn 1)"
    assert evs[-1]["type"] == "done" and evs[-1]["text"] == text_of(evs)
    f = final["final"]
    assert (f["status"], f["exit_code"], f["model"]) == ("completed", 0, "example-1")
    assert f["conversation_id"] and "credentials" not in final
    raws = [r for b in rx.bodies if b["prompt_id"] == "p1" for r in b.get("raw", [])]
    assert json.loads(raws[0])["type"] == "session"
    start(prompts, "p1b", "again", conversation_id=f["conversation_id"])
    assert rx.final("p1b")["final"]["status"] == "completed"
    assert text_of(rx.events("p1b")).endswith("(turn 2)")
    assert prompts.start({"id": "p1", "provider": load()["example"].agent_document(), "prompt": "x"})[0] == 409


def test_cancel_ends_the_whole_process_tree(prompts: Prompts, world: Any) -> None:
    rx: Receiver = world[2]
    start(prompts, "p2", "[slow] go")
    rx.wait_for("p2", "text")
    run = prompts._runs["p2"]
    assert run.proc is not None
    pid = run.proc.pid
    assert prompts.cancel({"id": "p2"})[1]["cancelled"] is True
    f = rx.final("p2")["final"]
    assert f["status"] == "cancelled"
    assert descendants(pid) == set() or not os.path.exists(f"/proc/{pid}")
    assert prompts.cancel({"id": "p2"})[1]["cancelled"] is False  # idempotent
    assert prompts.cancel({"id": "never"})[1] == {"cancelled": False, "state": "unknown"}


def test_hanging_cli_times_out_with_its_last_output(prompts: Prompts, world: Any) -> None:
    start(prompts, "p3", "[hang]", timeout=3)
    f = world[2].final("p3")["final"]
    assert f["status"] == "timed_out" and f["step"] == "timeout" and "thinking" in f["reason"]
    assert world[2].events("p3")[-1]["type"] == "error"


def test_flood_is_bounded_with_a_marker(prompts: Prompts, world: Any) -> None:
    start(prompts, "p4", "[flood:4000]", max_answer_bytes=65536)  # 4 MB of text from the model
    final = world[2].final("p4", 120)
    text = text_of(world[2].events("p4"))
    assert final["final"]["status"] == "completed" and final["final"]["truncated"] is True
    assert len(text.encode()) < 65536 + 200 and "truncated" in text


def test_refresh_pushes_the_rewritten_credentials(prompts: Prompts, world: Any) -> None:
    _issuer, state, rx = world
    state.access = dict.fromkeys(state.access, 0.0)
    start(prompts, "p5", "hello")
    body = rx.final("p5")
    assert body["final"]["status"] == "completed"
    with rx.cond:  # at once when written (inotify), or with the final batch: exactly once either way
        pushed = [b["credentials"] for b in rx.bodies if b["prompt_id"] == "p5" and "credentials" in b]
    assert len(pushed) == 1
    files = pushed[0]["files"]
    assert [f["target"] for f in files] == [".example/credentials.json"] and files[0]["mode"] == 0o600


def test_revoked_credential_names_the_credentials_step(prompts: Prompts, world: Any) -> None:
    _issuer, state, rx = world
    state.revoked |= set(state.access)
    start(prompts, "p6", "hello")
    f = rx.final("p6")["final"]
    assert (f["status"], f["step"]) == ("failed", "credentials")
    assert "revoked" in f["needs_signin"]


def test_bad_requests_are_refused(prompts: Prompts) -> None:
    doc = load()["example"].agent_document()
    assert prompts.start({"id": "x", "provider": doc, "prompt": 3})[0] == 400
    assert prompts.start({"id": "x", "provider": doc, "prompt": "a", "model": "--evil"})[0] == 400
    strict = Prompts({"providers": ["nope"]}, prompts.home)
    assert strict.start({"id": "x", "provider": doc, "prompt": "a"})[0] == 403


def test_a_refresh_during_a_long_prompt_is_pushed_before_its_end(prompts: Prompts, world: Any) -> None:
    _issuer, state, rx = world
    state.access = dict.fromkeys(state.access, 0.0)
    start(prompts, "p7", "[wait:3] later")
    final = rx.final("p7")
    assert final["final"]["status"] == "completed" and "credentials" not in final  # pushed once, not again
    with rx.cond:
        early = [b for b in rx.bodies if b["prompt_id"] == "p7" and "credentials" in b]
    assert len(early) == 1 and "final" not in early[0]
    data = json.loads(base64.b64decode(early[0]["credentials"]["files"][0]["data_b64"]))
    assert data["refresh_token"] in state.refresh  # the rotated one, the one the IdP now accepts
