"""The example CLI's `prompt` command against the example model API over loopback: streamed answer, conversation
resume, refresh with a rotated refresh token rewriting the credential file, a revoked credential, NUL bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.providers.registry import load
from hearth_agent.promptdef import map_line
from hearth_example.idp import IdpServer, IdpState


@pytest.fixture
def idp() -> Iterator[tuple[str, IdpState]]:
    state = IdpState()
    server = IdpServer(("127.0.0.1", 0), state)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def signed_in(home: Path, issuer: str, state: IdpState) -> dict[str, object]:
    creds = {"issuer": issuer, **state.issue()}
    (home / ".example").mkdir(parents=True)
    (home / ".example" / "credentials.json").write_text(json.dumps(creds))
    return creds


def run(home: Path, prompt: bytes, *args: str) -> tuple[int, list[dict[str, object]], str]:
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "hearth_example.cli", "prompt", "--json", *args],
        input=prompt,
        capture_output=True,
        env=env,
        cwd=home,
        timeout=60,
    )
    return proc.returncode, [json.loads(x) for x in proc.stdout.splitlines()], proc.stderr.decode()


def events(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    p = load()["example"].prompt
    assert p is not None
    from hearth_agent.promptdef import parse_prompt_section

    rules = parse_prompt_section(p.model_dump()).rules
    return [e for line in lines for e in map_line(rules, line).events]


def test_answers_streamed_and_continues_its_conversation(idp: tuple[str, IdpState], tmp_path: Path) -> None:
    issuer, state = idp
    signed_in(tmp_path, issuer, state)
    code, lines, _ = run(tmp_path, "hello\x00 \x1b[31mworld é".encode(), "--model", "m-7")
    assert code == 0
    evs = events(lines)
    text = "".join(str(e["text"]) for e in evs if e["type"] == "text")
    assert text == "You said: hello\x00 \x1b[31mworld é (turn 1)"
    assert evs[-1] == {"type": "done", "text": text}
    assert any(e["type"] == "usage" for e in evs)
    sid = str(lines[0]["session_id"])
    code, lines, _ = run(tmp_path, b"again", "--resume", sid)
    assert code == 0 and str(lines[-1]["result"]).endswith("(turn 2)") and lines[-1]["session_id"] == sid
    code, lines, err = run(tmp_path, b"x", "--resume", "nope")
    assert code == 2 and "no conversation" in err


def test_expired_token_is_refreshed_rotated_and_rewritten(idp: tuple[str, IdpState], tmp_path: Path) -> None:
    issuer, state = idp
    before = signed_in(tmp_path, issuer, state)
    state.access = dict.fromkeys(state.access, 0.0)  # every access token expired
    code, lines, _ = run(tmp_path, b"hi")
    assert code == 0 and lines[-1]["type"] == "result"
    after = json.loads((tmp_path / ".example" / "credentials.json").read_text())
    assert after["refresh_token"] != before["refresh_token"] and after["access_token"] != before["access_token"]
    assert (tmp_path / ".example" / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert before["refresh_token"] not in state.refresh  # rotated: the old one works no more


def test_revoked_credential_fails_with_a_clear_reason(idp: tuple[str, IdpState], tmp_path: Path) -> None:
    issuer, state = idp
    signed_in(tmp_path, issuer, state)
    state.revoked |= set(state.access)
    code, lines, err = run(tmp_path, b"hi")
    assert code == 4 and "credential revoked: sign in again" in err
    assert events(lines)[-1] == {"type": "error", "message": "credential revoked: sign in again"}


def test_tools_act_in_the_workspace_and_read_only_refuses_writes(idp: tuple[str, IdpState], tmp_path: Path) -> None:
    issuer, state = idp
    signed_in(tmp_path, issuer, state)
    code, lines, _ = run(tmp_path, b"[tool:write:out.txt]", "--read-only")
    tool = [e for e in events(lines) if e["type"] == "tool"]
    assert code == 0 and tool[0]["result"] == "refused: read-only mode" and not (tmp_path / "out.txt").exists()
    code, lines, _ = run(tmp_path, b"[tool:write:out.txt]", "--write")
    assert code == 0 and (tmp_path / "out.txt").exists()
