"""Agent → controller for prompts: the batches a CLI sandbox's agent pushes (`…/sessions/{cli owner}/prompt`).

Only the sandbox that runs a prompt may push for it. Batches are checked, bounded (the stored answer never exceeds
HEARTH_PROMPT_MAX_ANSWER_BYTES: beyond it one truncation marker), sealed and stored, then every stream listening is
woken. The final batch ends the prompt; rewritten credential files in it are re-sealed as a new version unless a
newer one (a sign-in meanwhile) exists, which is then delivered instead: the newest wins.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from hearth.errors import HearthError
from hearth.prompts.intake import Live, bound
from hearth.prompts.states import PromptStatus, Step
from hearth.store.models import PromptRow
from hearth.vault.store import CredentialFile
from hearth_agent.homefs import MAX_FILE as MAX_CREDENTIAL_FILE

if TYPE_CHECKING:
    from hearth.prompts.service import PromptService

log = logging.getLogger("hearth.prompts")


async def on_prompt(svc: PromptService, owner: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    pid = str(data.get("prompt_id", ""))
    if not svc.adopted:
        return 503, {"error": "the controller is adopting its prompts after a restart; retry"}
    live = svc._live.get(pid)
    row = await svc.store.get(pid) if live is not None else None
    if live is None or row is None or live.owner != owner:
        return 404, {"error": "no such prompt running in this sandbox"}
    if PromptStatus(row.status).terminal:
        return 409, {"error": f"the prompt is {row.status}"}
    events, raw = data.get("events") or [], data.get("raw") or []
    if not isinstance(events, list) or not isinstance(raw, list):
        return 400, {"error": "events and raw must be lists"}
    kept = bound(row, live, events, svc.s.prompt_max_answer_bytes)
    raw_kept = [str(r)[:65536] for r in raw if isinstance(r, str)][:1000]
    fields: dict[str, Any] = {}
    usage = [e["usage"] for e in kept if e["type"] == "usage"]
    if usage:
        fields["usage"] = {**(row.usage or {}), **usage[-1]}
    timing = "first_output" if any(e["type"] in ("text", "tool") for e in kept) else None
    final = data.get("final")
    if isinstance(final, dict):
        conv, model = final.get("conversation_id"), final.get("model")
        if isinstance(conv, str) and conv:
            fields["conversation_id"] = conv[:200]
        if isinstance(model, str) and model:
            fields["model"] = model[:200]
    fields["answer_bytes"] = len(live.answer.encode())
    fields["truncated"] = bool(row.truncated or any(e.get("truncated") for e in kept))
    if isinstance(final, dict) and final.get("truncated") is True:
        fields["truncated"] = True  # the agent bounded it first
    if kept or raw_kept or fields:
        row = await svc.store.append(row, kept, raw_kept, timing=timing, **fields)
    svc.changes.notify(pid)
    if isinstance(final, dict):
        await finish(svc, row, live, final, data.get("credentials"))
    elif data.get("credentials") is not None:  # rewritten during the run: a refresh while it answers
        await credentials(svc, row, live, data.get("credentials"))
    return 200, {"ok": True}


async def finish(svc: PromptService, row: PromptRow, live: Live, final: dict[str, Any], creds: Any) -> None:
    status = final.get("status")
    step = final.get("step")
    reason = final.get("reason")
    code = final.get("exit_code")
    try:
        st = PromptStatus(str(status))
    except ValueError:
        st = PromptStatus.FAILED
    if not st.terminal:
        st = PromptStatus.FAILED
    stp = Step(step) if step in {s.value for s in Step} else (None if st is PromptStatus.COMPLETED else Step.CLI)
    needs = final.get("needs_signin")
    await credentials(svc, row, live, creds)
    if isinstance(needs, str) and needs:
        await svc.vault.set_status(row.user_id, row.provider, live.base_version, "needs_signin", needs[:300])
    else:
        await svc.vault.set_status(row.user_id, row.provider, -1, "active", None)  # last_used only
    await svc._end(
        row.id, st, stp, str(reason)[:2000] if isinstance(reason, str) else None,
        exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
    )  # fmt: skip
    assert live.final is not None
    live.final.set()
    await svc.clis.touch(row.user_id)


async def credentials(svc: PromptService, row: PromptRow, live: Live, creds: Any) -> None:
    """Rewritten credential files from the CLI: a new version — or, when a newer one was sealed meanwhile,
    that newer one delivered over them (the newest wins)."""
    if not isinstance(creds, dict) or creds.get("provider") != row.provider or not isinstance(creds.get("files"), list):
        return
    provider = svc.providers[row.provider]
    allowed = {f.target for f in provider.credential_files}
    try:
        files = [
            CredentialFile(
                str(f["target"]), int(f["mode"]) & 0o777, base64.b64decode(str(f["data_b64"]), validate=True)
            )
            for f in creds["files"]
        ]
    except (KeyError, TypeError, ValueError, binascii.Error):
        log.warning("refreshed credentials malformed; ignored", extra={"prompt_id": row.id})
        return
    if {f.path for f in files} != allowed or any(len(f.data) > MAX_CREDENTIAL_FILE for f in files):
        log.warning("refreshed credentials are not the provider's files; ignored", extra={"prompt_id": row.id})
        return
    meta = await svc.vault.refreshed(row.user_id, row.provider, files, live.base_version)
    if meta is not None:
        live.base_version = meta.version  # the sandbox holds this one now
        log.info("credentials refreshed by the CLI: re-sealed", extra={"prompt_id": row.id, "version": meta.version})
        return
    opened = await svc.vault.open_versioned(row.user_id, row.provider)
    if opened is not None:  # a newer sign-in: it goes back over what the CLI wrote
        with contextlib.suppress(HearthError):
            await svc.clis.deliver(row.user_id, opened[0], row.provider, version=opened[1].version)
