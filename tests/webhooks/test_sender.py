"""The sender against a real receiver on loopback (tests/webhooks/receiver.py, which verifies every signature): down
for a while, then every event arrives, in order per stream, never two of one stream in flight; two nodes share the
outbox without sending a row twice; a stopped or killed sender loses nothing; error answers back off and, after
GIVE_UP, a row is `failed` and its stream moves on. Real store (SQLite, and PostgreSQL in the second pass)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.observe.metrics import Metrics
from hearth.serving.local import free_port
from hearth.store.db import Database
from hearth.store.models import OutboxRow
from hearth.webhooks.outbox import Outbox
from hearth.webhooks.sender import GIVE_UP, Sender
from tests.waits import eventually
from tests.webhooks.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
FAST = {"timeout": 10.0, "backoff": 0.05, "backoff_max": 0.3, "poll": 0.05, "give_up": GIVE_UP}


def fast(s: Settings, db: Database, metrics: Metrics | None = None, **over: float) -> Sender:
    """A sender with test-sized back-off (`over` replaces any of FAST)."""
    o = {**FAST, **over}
    return Sender(
        s,
        db,
        timeout=o["timeout"],
        backoff=o["backoff"],
        backoff_max=o["backoff_max"],
        give_up=o["give_up"],
        poll=o["poll"],
        metrics=metrics,
    )


def rows(db: Database) -> list[OutboxRow]:
    return db.call(lambda s: list(s.scalars(select(OutboxRow).order_by(OutboxRow.id))))


def write(db: Database, outbox: Outbox, streams: list[str], per_stream: int) -> None:
    """Events interleaved across streams, one transaction each (as state changes write them)."""
    for i in range(per_stream):
        for stream in streams:

            def add(s: Db, st: str = stream, n: int = i) -> None:
                outbox.add(s, f"session.step{n}", st, {"session_id": st, "n": n})

            db.call(add)


def expected(db: Database) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rows(db):
        out.setdefault(r.stream, []).append(r.msg_id)
    return out


@contextlib.asynccontextmanager
async def sending(sender: Sender) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sender.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(SECRET, free_port())
    yield r
    await r.down()


def settings_for(make_settings: Callable[..., Settings], r: Receiver, **env: str) -> Settings:
    return make_settings(HEARTH_WEBHOOK_URL=r.url, HEARTH_WEBHOOK_SECRET=SECRET, **env)


async def test_a_receiver_down_for_a_while_then_gets_every_event_in_order(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    s = settings_for(make_settings, receiver)
    db = Database(s.db_url, s.data_dir)
    try:
        outbox = Outbox(s)
        streams = [f"s{i}" for i in range(5)]
        write(db, outbox, streams, 4)
        async with sending(fast(s, db)):
            # Down: every stream's head fails and backs off; nothing behind a head is tried.
            await eventually(lambda: all(r.attempts >= 2 for r in rows(db) if r.msg_id in heads(db)), 60, "retries")
            for r in rows(db):
                assert r.state == "pending"
                if r.msg_id in heads(db):
                    assert r.last_error is not None and r.last_error.startswith("[webhook] cannot reach 127.0.0.1")
                    assert "tenant" not in r.last_error and "/hooks" not in r.last_error  # only the host
                    assert r.last_status is None
                else:
                    assert r.attempts == 0, "a later event of a stream was tried before the earlier one was acked"
            write(db, outbox, streams, 2)  # more state changes while it is down: written at once, not blocked
            await receiver.up()
            await eventually(
                lambda: all(r.state == "delivered" for r in rows(db)), 60, "delivery after the receiver is up"
            )
        assert receiver.bad_signatures == 0
        assert receiver.by_stream() == expected(db)
        assert receiver.max_in_flight_per_stream == 1
    finally:
        db.dispose()


def heads(db: Database) -> set[str]:
    first: dict[str, str] = {}
    for r in rows(db):
        first.setdefault(r.stream, r.msg_id)
    return set(first.values())


async def test_two_nodes_share_the_outbox_without_sending_a_row_twice(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    a = settings_for(make_settings, receiver, HEARTH_NODE_ID="a")
    b = settings_for(make_settings, receiver, HEARTH_NODE_ID="b")
    db_a, db_b = Database(a.db_url, a.data_dir), Database(b.db_url, b.data_dir)
    try:
        await receiver.up()
        write(db_a, Outbox(a), [f"a{i}" for i in range(4)], 5)
        write(db_b, Outbox(b), [f"b{i}" for i in range(4)], 5)
        async with sending(fast(a, db_a)), sending(fast(b, db_b)):
            await eventually(
                lambda: all(r.state == "delivered" for r in rows(db_a)), 60, "both nodes' events delivered"
            )
        assert len(receiver.acked) == 40 and len({g.msg_id for g in receiver.acked}) == 40  # each exactly once
        assert receiver.by_stream() == expected(db_a)
        assert receiver.max_in_flight_per_stream == 1
        assert all(r.attempts == 1 for r in rows(db_a))
    finally:
        db_a.dispose()
        db_b.dispose()


async def test_a_stopped_or_killed_sender_loses_nothing(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    s = settings_for(make_settings, receiver)
    db = Database(s.db_url, s.data_dir)
    try:
        write(db, Outbox(s), ["x"], 3)
        receiver.hang = True  # the first attempt never gets an answer
        await receiver.up()
        first = fast(s, db, timeout=30.0)
        async with sending(first):
            await eventually(lambda: receiver.requests == 1, 60, "the first attempt")
            held = rows(db)[0]
            assert held.claimed_by == first.me and held.state == "pending"
        # A graceful stop hands the claim back: the next sender does not wait for it to lapse.
        assert rows(db)[0].claimed_by is None
        # A killed one cannot: its claim stays until it lapses — unless the next instance is of the same node.
        far = datetime.now(UTC) + timedelta(hours=1)
        db.call(lambda d: d.execute(update(OutboxRow).values(claimed_by="local/dead", claimed_until=far)))
        receiver.hang = False
        async with sending(fast(s, db)):
            await eventually(lambda: all(r.state == "delivered" for r in rows(db)), 60, "after the restart")
        assert receiver.by_stream() == expected(db)
        # Another node's live claim is respected (it may be sending right now).
        write(db, Outbox(s), ["y"], 1)
        db.call(
            lambda d: d.execute(
                update(OutboxRow).where(OutboxRow.stream == "y").values(claimed_by="other/1", claimed_until=far)
            )
        )
        sender = fast(s, db)
        async with sending(sender):
            await asyncio.sleep(0.5)
        assert [r.state for r in rows(db) if r.stream == "y"] == ["pending"]
        assert "y" not in receiver.by_stream()
    finally:
        db.dispose()


async def test_error_answers_back_off_then_give_up_and_the_stream_moves_on(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    s = settings_for(make_settings, receiver)
    db = Database(s.db_url, s.data_dir)
    try:
        write(db, Outbox(s), ["z"], 2)
        receiver.refuse, receiver.retry_after = {rows(db)[0].msg_id}, "0"  # the first event is refused (503)
        await receiver.up()
        metrics = Metrics()
        count = metrics.registry.get_sample_value
        async with sending(fast(s, db, metrics, give_up=1.0)):
            await eventually(lambda: rows(db)[1].state == "delivered", 60, "the next event after the failed one")
            await eventually(
                lambda: count("hearth_webhook_attempts_total", {"result": "delivered"}) == 1, 60, "counted"
            )
        head: Any = rows(db)[0]
        assert head.state == "failed" and head.attempts >= 2 and head.last_status == 503
        assert head.last_error == "[webhook] 127.0.0.1 answered HTTP 503"
        assert rows(db)[1].attempts == 1  # not tried while the first one was pending
        assert [g.msg_id for g in receiver.acked] == [rows(db)[1].msg_id]
        assert count("hearth_webhook_attempts_total", {"result": "refused"}) == head.attempts
        assert count("hearth_webhook_attempts_total", {"result": "given_up"}) == 1
        assert count("hearth_webhook_attempts_total", {"result": "delivered"}) == 1
        assert receiver.bad_signatures == 0
    finally:
        db.dispose()


async def test_a_redirect_is_not_followed(make_settings: Callable[..., Settings], receiver: Receiver) -> None:
    s = settings_for(make_settings, receiver)
    db = Database(s.db_url, s.data_dir)
    try:
        write(db, Outbox(s), ["r"], 1)
        receiver.status = 302
        await receiver.up()
        async with sending(fast(s, db)):
            await eventually(lambda: rows(db)[0].attempts >= 1, 60, "one attempt")
        err = rows(db)[0].last_error
        assert err is not None and "HTTP 302" in err and "redirects are not followed" in err
        assert rows(db)[0].state == "pending"
    finally:
        db.dispose()
