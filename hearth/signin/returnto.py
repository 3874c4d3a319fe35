"""A session's return_url (POST /api/auth/start; checked against HEARTH_EMBED_ORIGINS there and stored with the
session row by the admission): read back for the API and the viewer page, which offer it when the sign-in ends."""

from __future__ import annotations

from sqlalchemy import select

from hearth.store.db import Database
from hearth.store.models import SessionRow


async def return_url(db: Database, session_id: str) -> str | None:
    """The session's return_url, or None (none given, or no such session)."""
    return await db.run(lambda s: s.scalar(select(SessionRow.return_url).where(SessionRow.id == session_id)))
