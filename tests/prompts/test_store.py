"""`hearth.prompts.store`: 100 concurrent admissions through two stores (as two controllers sharing the database)
respect HEARTH_MAX_PROMPTS_PER_USER and HEARTH_PROMPT_QUEUE exactly (SQLite here; PostgreSQL on the second pass);
sealed prompts and events open only for their own user and prompt; retention purges what ended long ago."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest

from hearth.config import Settings
from hearth.prompts.states import PromptStatus
from hearth.prompts.store import PromptStore, Refused
from hearth.store.db import Database
from hearth.store.models import PromptRow, utcnow
from hearth.vault.keys import KeyRing
from hearth.vault.seal import SealError


async def test_hundred_concurrent_admissions_respect_the_limits(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_PROMPT_QUEUE="25", HEARTH_MAX_PROMPTS_PER_USER="2")
    ring = KeyRing.load("", settings.data_dir / "vault.keys")
    dbs = [Database(settings.db_url, settings.data_dir, workers=16) for _ in range(2)]
    stores = [PromptStore(settings, db, ring) for db in dbs]
    users = ["solo"] * 50 + [f"u{i}" for i in range(50)]

    async def one(i: int, user: str) -> str:
        try:
            await stores[i % 2].admit(str(uuid.uuid4()), user, "example", "hi", permissions="read_only", timeout=60.0)
        except Refused as exc:
            setting = "HEARTH_PROMPT_QUEUE" if "HEARTH_PROMPT_QUEUE" in str(exc) else "HEARTH_MAX_PROMPTS_PER_USER"
            assert setting in str(exc)
            return f"{exc.status}:{user == 'solo'}"
        return f"admitted:{user == 'solo'}"

    try:
        got = Counter(await asyncio.gather(*(one(i, u) for i, u in enumerate(users))))
        assert got["admitted:True"] == 2, got
        assert got["admitted:True"] + got["admitted:False"] == 25, got
        assert set(got) <= {"admitted:True", "admitted:False", "429:True", "503:True", "503:False"}, got
        rows, total = await stores[0].history("solo", 100, 0)
        assert total == 2 and all(r.status == PromptStatus.QUEUED.value for r in rows)
    finally:
        for db in dbs:
            db.dispose()


async def test_sealed_per_prompt_and_purged_after_retention(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_PROMPT_RETENTION="3600")
    ring = KeyRing.load("", settings.data_dir / "vault.keys")
    db = Database(settings.db_url, settings.data_dir)
    store = PromptStore(settings, db, ring)
    try:
        row = await store.admit("p-1", "ana", "example", "secret\x00words", permissions="read_only", timeout=5.0)
        assert store.prompt_text(row) == "secret\x00words"
        assert row.prompt_ct is not None and b"secret" not in row.prompt_ct
        await store.append(
            row, [{"type": "text", "text": "a", "seq": 1}, {"type": "text", "text": "b", "seq": 2}], ["{}"]
        )
        chunks = await store.chunks(row, 1, None)
        assert [c.items for c in chunks] == [
            [{"type": "text", "text": "a", "seq": 1}, {"type": "text", "text": "b", "seq": 2}]
        ]
        assert await store.chunks(row, 2, None) == []
        assert [c.kind for c in await store.chunks(row, 2, 0)] == ["raw"]
        other = PromptRow(**{k: getattr(row, k) for k in ("id", "key_id", "prompt_nonce", "prompt_ct")}, user_id="bob")
        with pytest.raises(SealError):
            store.prompt_text(other)  # bound to its user
        assert await store.transition("p-1", PromptStatus.COMPLETED) is None  # queued → completed is not a step
        ended = await store.transition("p-1", PromptStatus.CANCELLED)
        assert ended is not None and ended.prompt_ct is None  # the prompt is not kept after its run
        assert await store.purge() == 0

        def age(d: object) -> None:
            r = d.get(PromptRow, "p-1")  # type: ignore[attr-defined]
            r.ended_at = utcnow() - timedelta(seconds=7200)

        await db.run(age)
        assert await store.purge() == 1 and await store.get("p-1") is None
    finally:
        db.dispose()
