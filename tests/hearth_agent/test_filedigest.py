"""`POST /v1/files/digest`: sizes, modes and SHA-256 of delivered files in a real home directory (tmp_path), through
a real AgentServer on loopback; never a byte of the file; symlinks, escapes and bad bodies refused."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hearth_agent import filedigest
from hearth_agent.server import AgentServer

SECRET = "s" * 32
CONTENT = b'{"access_token": "ex-at-never-shown"}'


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".example").mkdir(mode=0o700)
    f = tmp_path / ".example" / "credentials.json"
    f.write_bytes(CONTENT)
    f.chmod(0o600)
    return tmp_path


@pytest.fixture
def agent(home: Path) -> Iterator[str]:
    server = AgentServer(("127.0.0.1", 0), SECRET, lambda: {"ok": True})
    server.route("POST", "/v1/files/digest", filedigest.route(str(home)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def call(base: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"{base}/v1/files/digest",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_digest_of_present_and_absent_files(agent: str) -> None:
    status, body = call(agent, {"targets": [".example/credentials.json", ".example/other.json", "nodir/x"]})
    assert status == 200, body
    assert body == {
        "files": [
            {
                "target": ".example/credentials.json",
                "size": len(CONTENT),
                "mode": 0o600,
                "sha256": hashlib.sha256(CONTENT).hexdigest(),
            }
        ],
        "absent": [".example/other.json", "nodir/x"],
    }
    assert "never-shown" not in json.dumps(body)


def test_symlinks_escapes_and_bad_bodies_are_refused(
    agent: str, home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret"
    outside.write_bytes(b"outside")
    os.symlink(outside, home / "link.json")
    os.symlink(outside.parent, home / "linkdir")
    for targets in (["link.json"], ["linkdir/secret"], ["../x"], ["/etc/passwd"], [], "x", [1], ["a"] * 33):
        status, body = call(agent, {"targets": targets})
        assert status == 400, (targets, body)
        assert "outside" not in json.dumps(body)
    # a refused path anywhere in the batch: nothing is read
    status, body = call(agent, {"targets": [".example/credentials.json", "../x"]})
    assert status == 400 and "files" not in body
    status, _ = call(agent, {})
    assert status == 400
