"""A small async client for Firecracker's API over its Unix socket. Every call has a timeout; every failure becomes
a DriverError carrying Firecracker's own `fault_message` and a hint for the fix."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from hearth.errors import DriverError, Hop
from hearth.sandbox.firecracker.plan import ApiCall

DEFAULT_TIMEOUT = 5.0

# What to check when Firecracker refuses a call, by path prefix.
_HINTS = {
    "/logger": "the log file must exist and be writable by the firecracker process (inside the jail when jailed)",
    "/metrics": "the metrics file must exist and be writable by the firecracker process",
    "/boot-source": "the kernel must be an uncompressed ELF vmlinux (HEARTH_IMAGE_DIR; see docs/firecracker.md)",
    "/drives": "the disk image must exist and be readable/writable by the firecracker process",
    "/network-interfaces": "the TAP must exist in the fabric namespace and not be held by another process",
    "/machine-config": "HEARTH_VM_VCPUS must be a whole number in 1..32 and HEARTH_VM_MEM_MIB a whole number of MiB",
    "/actions": "see the sandbox's console.log and firecracker.log (kernel, rootfs, /dev/kvm)",
}


class ApiUnreachable(DriverError):
    """The API socket did not answer at all (the process may have exited); distinct from a refused call."""


def hint_for(path: str) -> str:
    for prefix, hint in _HINTS.items():
        if path.startswith(prefix):
            return hint
    return "see the sandbox's firecracker.log"


def fault_message(response: httpx.Response) -> str:
    """Firecracker's error text (`{"fault_message": ...}`), or the raw body when it is not that shape."""
    try:
        doc = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("fault_message"), str):
        return str(doc["fault_message"])
    text = response.text.strip()
    return text[:300] if text else f"HTTP {response.status_code} without a body"


class FirecrackerApi:
    """`async with FirecrackerApi(sock) as api: await api.call(ApiCall("PUT", "/logger", {...}))`."""

    def __init__(self, socket_path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://localhost",
            timeout=timeout,
        )

    async def __aenter__(self) -> FirecrackerApi:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> httpx.Response:
        """One call; raises DriverError on a transport failure, a timeout or any non-2xx answer."""
        where = f"firecracker API {method} {path}"
        try:
            response = await self._client.request(
                method,
                path,
                json=body,
                headers={"Accept": "application/json"},
                timeout=self.timeout if timeout is None else timeout,
            )
        except httpx.TimeoutException as exc:
            raise ApiUnreachable(
                Hop.DRIVER,
                f"{where}: no answer within {self.timeout if timeout is None else timeout:g}s ({type(exc).__name__})",
                "the VMM is stuck or overloaded; see the sandbox's firecracker.log",
            ) from exc
        except httpx.TransportError as exc:
            raise ApiUnreachable(
                Hop.DRIVER,
                f"{where}: cannot talk to {self.socket_path}: {exc or type(exc).__name__}",
                "the firecracker process exited or never opened its API socket; see the sandbox's console.log",
            ) from exc
        if not response.is_success:
            raise DriverError(
                Hop.DRIVER,
                f"{where} refused (HTTP {response.status_code}): {fault_message(response)}",
                hint_for(path),
            )
        return response

    async def call(self, call: ApiCall, timeout: float | None = None) -> httpx.Response:
        return await self.request(call.method, call.path, call.body, timeout)

    async def version(self) -> str:
        doc = (await self.request("GET", "/version")).json()
        return str(doc.get("firecracker_version", "?")) if isinstance(doc, dict) else "?"
