"""What a CLI sandbox pushes for a prompt, checked and bounded before it is stored: only the schema's events, only
sequence numbers above the stored ones (a retried push repeats), bounded strings, and an answer that never exceeds
HEARTH_PROMPT_MAX_ANSWER_BYTES (one truncation marker, the agent's own when it bounded first)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from hearth.store.models import PromptRow

EVENT_TYPES = {"text", "tool", "usage", "error", "done"}
TRUNCATED = "\n[hearth: the answer was truncated here: it exceeded {n} bytes]"


@dataclass
class Live:
    owner: str = ""  # the CLI sandbox owner id allowed to push for it
    base_version: int = 0  # the credential version the CLI sandbox held at the start
    answer: str = ""
    done_text: str | None = None
    final: asyncio.Event | None = None


def bound(row: PromptRow, live: Live, events: list[Any], cap: int) -> list[dict[str, Any]]:
    """The schema's events with sequence numbers above the stored ones (a retried push repeats), the answer
    bounded with one truncation marker."""
    out: list[dict[str, Any]] = []
    seq = row.last_seq
    for e in events[:5000]:
        if not isinstance(e, dict) or e.get("type") not in EVENT_TYPES:
            continue
        n = e.get("seq")
        if not isinstance(n, int) or isinstance(n, bool) or n <= seq:
            continue
        seq = n
        ev = _clean(e)
        if ev["type"] == "text":
            text = str(ev["text"])
            used = len(live.answer.encode())
            if row.truncated:
                continue  # one marker, then nothing more
            if ev.get("truncated"):  # the agent's own marker: it bounded the answer first
                text = text[:200]
            elif used + len(text.encode()) > cap:
                text = text.encode()[: max(0, cap - used)].decode(errors="ignore") + TRUNCATED.format(n=cap)
            else:
                live.answer += text
                out.append(ev)
                continue
            ev = {**ev, "text": text, "truncated": True}
            row.truncated = True
            live.answer += text
        elif ev["type"] == "done":
            t = ev.get("text")
            whole = isinstance(t, str) and t and not row.truncated and not ev.get("truncated")
            live.done_text = str(t) if whole and len(str(t).encode()) <= cap else None  # else: the bounded text
            ev["text"] = live.done_text if live.done_text is not None else live.answer
        out.append(ev)
    return out


def _clean(e: dict[str, Any]) -> dict[str, Any]:
    """One event in hearth's schema, with only its own fields (bounded strings)."""
    t = e["type"]
    out: dict[str, Any] = {"type": t, "seq": e["seq"]}
    if t == "text":
        out["text"] = str(e.get("text", ""))[: 1 << 20]
    elif t == "tool":
        out |= {k: str(e.get(k, ""))[:400] for k in ("name", "input", "result") if k in e}
    elif t == "usage":
        u = e.get("usage")
        out["usage"] = {
            str(k)[:64]: v
            for k, v in (u.items() if isinstance(u, dict) else [])
            if isinstance(v, int | float | str) and not isinstance(v, bool)
        }
    elif t == "error":
        out["message"] = str(e.get("message", ""))[:2000]
        if isinstance(e.get("step"), str):
            out["step"] = e["step"][:16]
    elif t == "done":
        out["text"] = e.get("text") if isinstance(e.get("text"), str) else None
    if e.get("truncated") is True:
        out["truncated"] = True
    return out
