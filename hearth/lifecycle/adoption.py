"""Whether a sandbox that outlived the previous controller can be adopted: it still lives (its launcher's PID and
start time, or its driver finds its processes) and its agent answers the stored secret."""

from __future__ import annotations

import asyncio

from hearth.agentlink.client import AgentRefused
from hearth.errors import HearthError
from hearth.lifecycle.sandbox import Sandbox
from hearth.sandbox.procs import same_process
from hearth.store.models import SandboxRow
from hearth_agent.contract import routes

ADOPT_TIMEOUT = 5.0


async def why_not(sb: Sandbox, row: SandboxRow) -> str | None:
    """None when `sb` (built from its stored `row`, not yet run by anyone) can be adopted, else the reason."""
    launcher = row.pid is not None and await asyncio.to_thread(same_process, row.pid, row.pid_start)
    if not launcher and not await sb.alive():
        return "its processes are gone"
    try:
        await sb.agent().call("GET", routes.LOGIN, timeout=ADOPT_TIMEOUT)
    except AgentRefused as exc:
        if exc.status == 401:
            return "its agent refused the stored secret (not the sandbox hearth started there)"
    except HearthError as exc:
        return f"its agent does not answer: {exc.reason}"
    except (OSError, TimeoutError) as exc:
        return f"its agent does not answer: {type(exc).__name__}"
    return None
