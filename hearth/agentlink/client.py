"""Minimal HTTP/1.0 JSON calls to a sandbox agent, over a socket opened inside the fabric namespace."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hearth.errors import HearthError, Hop
from hearth.fabric.dial import open_connection

MAX_RESPONSE = 4 << 20


async def http_json(
    netns: str | None,
    ip: str,
    port: int,
    method: str,
    path: str,
    timeout: float,
    body: Any = None,
    secret: str | None = None,
) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON body or None). Raises OSError/TimeoutError on transport errors."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.0", f"Host: {ip}", "Accept: application/json", "Connection: close"]
    if secret:
        head.append(f"Authorization: Bearer {secret}")
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    reader, writer = await open_connection(netns, ip, port, timeout)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(MAX_RESPONSE), timeout)
        while True:  # HTTP/1.0: the agent closes after the body
            more = await asyncio.wait_for(reader.read(MAX_RESPONSE), timeout)
            if not more:
                break
            raw += more
    finally:
        writer.close()
    header, _, content = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1]) if header.startswith(b"HTTP/") else 0
    return status, json.loads(content) if content.strip() else None


class AgentRefused(HearthError):
    """The agent answered with an HTTP error; `status` and `detail` are the agent's own."""

    def __init__(self, status: int, detail: str, message: str) -> None:
        super().__init__(Hop.AGENT, message, "see the agent log")
        self.status = status
        self.detail = detail


class AgentClient:
    """Authenticated calls to one sandbox's agent."""

    def __init__(self, netns: str | None, ip: str, port: int, secret: str) -> None:
        self.netns, self.ip, self.port, self.secret = netns, ip, port, secret

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        try:
            status, out = await http_json(self.netns, self.ip, self.port, method, path, timeout, body, self.secret)
        except (OSError, TimeoutError) as exc:
            raise HearthError(
                Hop.AGENT,
                f"agent {self.ip}:{self.port} unreachable ({type(exc).__name__})",
                "see `hearth doctor --session`",
            ) from exc
        if status >= 400:
            detail = str(out.get("error") if isinstance(out, dict) else out)
            raise AgentRefused(status, detail, f"agent refused {method} {path}: HTTP {status} {detail}")
        return out
