"""`hearth.session.admission`: concurrent admissions from many threads, each with its own connection, against the
real store (SQLite here; a fresh PostgreSQL database on scripts/test.sh's second pass) — exactly the limit passes."""

from __future__ import annotations

import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from hearth.api import problems
from hearth.config import Settings
from hearth.errors import PoolExhausted
from hearth.fabric.ipam import Ipam
from hearth.session import admission
from hearth.store.db import Database
from hearth.store.models import LeaseRow, SessionRow

THREADS = 24


def hammer(settings: Settings, users: list[str]) -> tuple[Counter[str], Database]:
    db = Database(settings.db_url, workers=THREADS)
    ipam = Ipam(settings, db)
    barrier = threading.Barrier(len(users))

    def one(user: str) -> str:
        barrier.wait()  # all at once
        try:
            admission.admit(db, ipam, settings, str(uuid.uuid4()), user, None, "remote_browser", "netns")
        except admission.LimitExceeded as exc:
            named = re.search(r"\(([A-Z_]+)\)", str(exc))  # the setting the reason names
            return f"{problems.status_for(exc)}:{named.group(1) if named else str(exc)}"
        except PoolExhausted:
            return "pool"
        return "admitted"

    with ThreadPoolExecutor(len(users)) as pool:
        return Counter(pool.map(one, users)), db


def counts(db: Database) -> tuple[int, int]:
    return db.call(
        lambda d: (
            int(d.scalar(select(func.count()).select_from(SessionRow)) or 0),
            int(d.scalar(select(func.count()).select_from(LeaseRow)) or 0),
        )
    )


@pytest.mark.parametrize(
    ("env", "users", "want"),
    [
        (
            {"MAX_BROWSER_SESSIONS": "7"},
            [f"u{i}" for i in range(THREADS)],
            {"admitted": 7, "503:MAX_BROWSER_SESSIONS": 17},
        ),
        ({"MAX_SESSIONS_PER_USER": "2"}, ["alice"] * THREADS, {"admitted": 2, "429:MAX_SESSIONS_PER_USER": 22}),
        (
            {"HEARTH_MAX_SESSIONS_PER_NODE": "5"},
            [f"u{i}" for i in range(THREADS)],
            {"admitted": 5, "503:HEARTH_MAX_SESSIONS_PER_NODE": 19},
        ),
        ({"IP_POOL_END": "192.168.100.4"}, [f"u{i}" for i in range(THREADS)], {"admitted": 3, "pool": 21}),
    ],
)
def test_concurrent_admissions_pass_exactly_the_limit(
    make_settings: Callable[..., Settings], env: dict[str, str], users: list[str], want: dict[str, int]
) -> None:
    settings = make_settings(**({"MAX_BROWSER_SESSIONS": "100", "MAX_SESSIONS_PER_USER": "100"} | env))
    got, db = hammer(settings, users)
    try:
        assert dict(got) == want
        assert counts(db) == (want["admitted"], want["admitted"])  # refused admissions leave no row, no lease
    finally:
        db.dispose()
