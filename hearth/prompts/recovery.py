"""After a controller restart: the prompts that outlived the previous controller (docs/prompts.md). A running one is
attached again (it keeps running in its sandbox: the agent retries its pushes) when its CLI sandbox was adopted and
its agent still runs it, else failed naming the sandbox; a queued one starts again; a starting one is failed (its
CLI sandbox's start was cut short: the prompt is sent again)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from hearth.errors import HearthError
from hearth.prompts.intake import Live
from hearth.prompts.states import PromptStatus, Step
from hearth_agent.contract import routes

if TYPE_CHECKING:
    from hearth.prompts.service import PromptService


async def adopt(svc: PromptService) -> int:
    """After a controller restart: every active prompt of this node is attached again (a running one keeps
    running in its sandbox: the agent retries its pushes) or started again (queued, starting)."""
    n = 0
    for row in await svc.store.active_on_node():
        if row.id in svc._tasks:
            continue
        attach = row.status == PromptStatus.RUNNING.value
        live = svc._live.setdefault(row.id, Live(final=asyncio.Event()))
        if attach:
            cli = await svc.clis.get(row.user_id)
            owner = await svc.clis.owner_of(row.user_id)
            if cli is None or owner is None or svc.clis.sandboxes.get(owner) is None:
                await svc._end(
                    row.id,
                    PromptStatus.FAILED,
                    Step.SANDBOX,
                    "[sandbox] the CLI sandbox did not survive the controller restart",
                )
                continue
            live.owner = owner
            client = svc._client(owner)
            state = "unknown"
            with contextlib.suppress(HearthError):
                out = await client.call("POST", routes.PROMPTS_STATUS, {"id": row.id}) if client else None
                state = str(out.get("state")) if isinstance(out, dict) else "unknown"
            if state == "unknown":
                await svc._end(
                    row.id,
                    PromptStatus.FAILED,
                    Step.SANDBOX,
                    "[sandbox] the CLI sandbox no longer runs this prompt (it restarted)",
                )
                continue
            meta = next((m for m in await svc.vault.list(row.user_id) if m.provider == row.provider), None)
            live.base_version = meta.version if meta else 0
        elif row.status == PromptStatus.STARTING.value:
            await svc.store.transition(row.id, PromptStatus.FAILED, step=Step.CONTROLLER.value,
                reason="[controller] the controller restarted while the CLI sandbox started; send the prompt again")  # fmt: skip
            svc.changes.notify(row.id)
            continue
        svc._start(row.id, row.user_id, attach)
        n += 1
    svc.adopted = True  # from here on a push for an unknown prompt is refused, not deferred
    return n
