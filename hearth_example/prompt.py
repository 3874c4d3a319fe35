"""`python3 -m hearth_example.cli prompt --json [--resume ID] [--model M] [--read-only|--write]`: answer the prompt
read from stdin through the example provider's model API (hearth_example/modelapi.py), like `claude -p
--output-format stream-json`: JSON lines on stdout —

    {"type": "session", "session_id", "model"}      first
    {"type": "delta", "text"}                         the answer as it comes
    {"type": "tool_call", "tool": {"name", "input"}, "output"}
    {"type": "usage", "usage": {"input_tokens", "output_tokens"}}
    {"type": "result", "result", "session_id"}        the final answer
    {"type": "error", "error": {"message"}}           then exit status ≠ 0

Reads ~/.example/credentials.json (its `issuer` is the provider). An expired access token is refreshed with the
refresh token and the credential file rewritten (atomically: a new file renamed over it) before the call is
retried; a revoked credential fails with "credential revoked: sign in again" (exit 4). The conversation is kept in
~/.example/sessions/<id>.json; `--resume ID` continues it. Tools act in the working directory only; `--read-only`
refuses writes.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

CLIENT_ID = "hearth-example-cli"
USAGE = "usage: python3 -m hearth_example.cli prompt --json [--resume ID] [--model M] [--read-only|--write]"
TIMEOUT = 30.0


class Failed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _home() -> Path:
    return Path.home() / ".example"


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _credentials() -> dict[str, Any]:
    try:
        creds = json.loads((_home() / "credentials.json").read_text())
    except (OSError, ValueError):
        raise Failed("not signed in: run `python3 -m hearth_example.cli login`", 3) from None
    if not isinstance(creds, dict) or not creds.get("access_token") or not creds.get("issuer"):
        raise Failed("the credential file is incomplete: sign in again", 3)
    return creds


def _refresh(creds: dict[str, Any]) -> dict[str, Any]:
    form = {"grant_type": "refresh_token", "refresh_token": str(creds.get("refresh_token", "")), "client_id": CLIENT_ID}
    req = urllib.request.Request(str(creds["issuer"]) + "/token", data=urllib.parse.urlencode(form).encode())
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            tokens = json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            raise Failed("credential revoked: sign in again (the refresh token was refused)", 4) from None
    except (urllib.error.URLError, OSError) as exc:
        raise Failed(f"provider API unreachable while refreshing: {exc}", 5) from None
    fresh = {**creds, **tokens}
    _write_atomic(_home() / "credentials.json", fresh)  # the rotated refresh token replaces the used one
    return fresh


def _open_stream(creds: dict[str, Any], body: dict[str, Any]) -> Any:
    for attempt in range(2):
        req = urllib.request.Request(
            str(creds["issuer"]) + "/v1/model/stream",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {creds['access_token']}", "Content-Type": "application/json"},
        )
        try:
            return urllib.request.urlopen(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    error = json.load(exc).get("error", "")
                except (ValueError, AttributeError):
                    error = ""
            if exc.code == 401 and error == "token_expired" and attempt == 0:
                creds = _refresh(creds)
                continue
            if exc.code == 401:
                raise Failed(f"credential {'revoked' if error == 'revoked' else 'refused'}: sign in again", 4) from None
            raise Failed(f"provider API error: HTTP {exc.code} {error}", 5) from None
        except (urllib.error.URLError, OSError) as exc:
            raise Failed(f"provider API unreachable: {exc}", 5) from None
    raise Failed("credential refused after a refresh: sign in again", 4)


def _tool(name: str, arg: str, write: bool) -> str:
    if name == "ls":
        return "\n".join(sorted(os.listdir(".")))
    if not write:
        return "refused: read-only mode"
    Path(os.path.basename(arg)).write_text("written by the example CLI\n")
    return f"wrote {os.path.basename(arg)}"


def run(argv: list[str]) -> int:
    resume = model = None
    write = False
    it = iter(argv)
    for a in it:
        if a == "--resume":
            resume = next(it, None)
        elif a == "--model":
            model = next(it, None)
        elif a in ("--read-only", "--write"):
            write = a == "--write"
        elif a != "--json":
            print(USAGE, file=sys.stderr)
            return 2
    prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    sessions = _home() / "sessions"
    sid = resume or secrets.token_hex(8)
    history: list[dict[str, Any]] = []
    if resume is not None:
        try:
            history = json.loads((sessions / f"{os.path.basename(resume)}.json").read_text())["messages"]
        except (OSError, ValueError, KeyError, TypeError):
            raise Failed(f"no conversation {resume!r} to resume", 2) from None
    history.append({"role": "user", "content": prompt})
    emit({"type": "session", "session_id": sid, "model": model or "example-1"})
    creds = _credentials()
    answer: list[str] = []
    with _open_stream(creds, {"model": model or "example-1", "messages": history}) as resp:
        for raw in resp:
            if not raw.strip():
                continue
            msg = json.loads(raw)
            if "delta" in msg:
                answer.append(str(msg["delta"]))
                emit({"type": "delta", "text": msg["delta"]})
            elif "tool" in msg:
                t = msg["tool"]
                out = _tool(str(t.get("name")), str(t.get("input", {}).get("path", ".")), write)
                emit({"type": "tool_call", "tool": t, "output": out})
            elif "usage" in msg:
                emit({"type": "usage", "usage": msg["usage"]})
            elif msg.get("done"):
                break
    text = "".join(answer)
    history.append({"role": "assistant", "content": text})
    _write_atomic(sessions / f"{sid}.json", {"messages": history})
    emit({"type": "result", "result": text, "session_id": sid})
    return 0


def main(argv: list[str]) -> int:
    try:
        return run(argv)
    except Failed as exc:
        emit({"type": "error", "error": {"message": str(exc)}})
        print(f"example: {exc}", file=sys.stderr)
        return exc.code
