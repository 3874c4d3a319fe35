"""Sends the outbox (hearth/webhooks/outbox.py) to HEARTH_WEBHOOK_URL: at least once, in order per stream, retried
with exponential back-off, shared by every node of a cluster.

- A pass claims due rows — the oldest pending row of each stream only, so a later event of a session is never sent
  before an earlier one was acknowledged — with a compare-and-set on `claimed_until` (and `FOR UPDATE SKIP LOCKED` on
  PostgreSQL): two senders (nodes) never hold one row at once. A claim lasts the HTTP timeout plus a margin; a sender
  that dies holding one is replaced when it lapses (a restarted node frees its previous instance's claims at once).
- Each row is POSTed with its Standard Webhooks headers, signed again at every attempt (fresh `webhook-timestamp`,
  same `webhook-id`). A 2xx answer acknowledges it; anything else — another status, a redirect (never followed), a
  refused connection, no answer within TIMEOUT — is retried after BACKOFF·2^(attempt-1) seconds (+ up to 20 %
  jitter, at most HEARTH_WEBHOOK_BACKOFF_MAX; a longer `Retry-After` is honoured up to that). After GIVE_UP since the event,
  a row is `failed` and its stream moves on. When the receiver answers 2xx again, events that failed because it could
  not be reached are retried at once instead of waiting out their back-off.
- Sending happens on its own task with its own HTTP client: a receiver that is down or slow never delays a state change
  (the outbox row is one INSERT in the change's transaction).

The secret and the URL's path and query are never logged or stored in `last_error` (only the receiver's host).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session as Db
from sqlalchemy.orm import aliased

from hearth import __version__
from hearth.config import Settings
from hearth.errors import StoreError
from hearth.observe.metrics import Metrics
from hearth.store.db import Database
from hearth.store.models import OutboxRow
from hearth.webhooks.signer import Signer

log = logging.getLogger("hearth.webhooks")

TIMEOUT = 15.0  # seconds for one POST, connect to last byte (Standard Webhooks recommends 15-30 s)
BACKOFF = 5.0  # seconds before the first retry; doubled at each further attempt
GIVE_UP = 3 * 24 * 3600.0  # an event still not acknowledged this long after it happened is `failed`
POLL = 1.0  # seconds between passes while nothing is due
BATCH = 32  # rows claimed per pass (each the head of a different stream: sent concurrently)
CLAIM_MARGIN = 10.0  # a claim outlives the HTTP timeout by this much
KEEP = 7 * 24 * 3600.0  # delivered and failed rows are listed this long, then removed
PRUNE_EVERY = 300.0


class State:
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Claimed:
    id: int
    msg_id: str
    stream: str
    body: str
    created_at: datetime


@dataclass(frozen=True)
class Outcome:
    status: int | None  # the receiver's HTTP status (None: no answer)
    error: str | None  # None: acknowledged (2xx)
    retry_after: float | None = None


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class Sender:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        timeout: float = TIMEOUT,
        backoff: float = BACKOFF,
        backoff_max: float | None = None,  # default HEARTH_WEBHOOK_BACKOFF_MAX
        give_up: float = GIVE_UP,
        poll: float = POLL,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.url = settings.webhook_url
        self.db = db
        self.signer = Signer(settings.webhook_secret)
        self.node_id = settings.node_id
        self.me = f"{settings.node_id}/{secrets.token_hex(6)}"  # this instance (a restart is another one)
        self.timeout, self.backoff, self.backoff_max, self.give_up, self.poll = (
            timeout,
            backoff,
            settings.webhook_backoff_max if backoff_max is None else backoff_max,
            give_up,
            poll,
        )
        self.host = urlsplit(self.url).hostname or "?"
        self._pruned = 0.0

    def __repr__(self) -> str:
        return f"Sender(host={self.host!r}, me={self.me!r})"

    # ---- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Send until cancelled; on cancel, hand this instance's claims back for the next sender."""
        limits = httpx.Limits(max_connections=BATCH, max_keepalive_connections=4)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), follow_redirects=False, limits=limits
        ) as client:
            try:
                with contextlib.suppress(StoreError):
                    await self.db.run(self._free_previous)
                while True:
                    sent = 0
                    try:
                        sent = await self.pass_once(client)
                        await self._prune()
                    except StoreError as exc:
                        log.warning("webhook pass skipped: %s", exc.reason)
                    except Exception:
                        log.exception("webhook pass failed")
                    if not sent:
                        await asyncio.sleep(self.poll)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self.db.run(self._release)), 5)

    async def pass_once(self, client: httpx.AsyncClient) -> int:
        """Claim what is due and send it; returns how many rows were attempted."""
        claimed = await self.db.run(self._claim)
        if claimed:
            done = await asyncio.gather(*(self._attempt(client, c) for c in claimed), return_exceptions=True)
            for c, result in zip(claimed, done, strict=True):
                if isinstance(result, Exception):  # its claim lapses: the row is tried again
                    log.warning("webhook attempt not recorded: %s", result, extra=_ids(c))
        return len(claimed)

    async def _attempt(self, client: httpx.AsyncClient, c: Claimed) -> None:
        outcome = await self.post(client, c.msg_id, c.body.encode())
        given_up = await self.db.run(lambda db: self._record(db, c, outcome))
        if self.metrics is not None:
            result = "delivered" if outcome.error is None else "refused" if outcome.status else "unreachable"
            self.metrics.webhook_attempts.labels(result).inc()
            if given_up:
                self.metrics.webhook_attempts.labels("given_up").inc()
        if outcome.error is not None:
            log.info("webhook not acknowledged: %s", outcome.error, extra=_ids(c))

    async def post(self, client: httpx.AsyncClient, msg_id: str, payload: bytes) -> Outcome:
        headers = {
            "content-type": "application/json",
            "user-agent": f"hearth/{__version__}",
            **self.signer.headers(msg_id, payload),
        }
        try:
            async with client.stream("POST", self.url, content=payload, headers=headers) as resp:
                status = resp.status_code  # the body is not read: only the status counts
                retry_after = _retry_after(resp.headers.get("retry-after"))
        except httpx.TimeoutException:
            return Outcome(None, f"[webhook] {self.host} did not answer within {self.timeout:.0f}s")
        except httpx.HTTPError as exc:
            return Outcome(None, f"[webhook] cannot reach {self.host}: {_plain(exc)}")
        if 200 <= status < 300:
            return Outcome(status, None)
        what = "redirects are not followed: point HEARTH_WEBHOOK_URL at the final URL" if 300 <= status < 400 else ""
        return Outcome(
            status, f"[webhook] {self.host} answered HTTP {status}{'; ' + what if what else ''}", retry_after
        )

    # ---- store work (on the store's executor, one transaction each) ---------------------------------
    def _claim(self, db: Db) -> list[Claimed]:
        now = datetime.now(UTC)
        older = aliased(OutboxRow)
        blocked = exists().where(
            older.stream == OutboxRow.stream, older.id < OutboxRow.id, older.state == State.PENDING
        )
        free = or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now)
        rows = db.scalars(
            select(OutboxRow)
            .where(OutboxRow.state == State.PENDING, OutboxRow.next_attempt_at <= now, free, ~blocked)
            .order_by(OutboxRow.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True, of=OutboxRow)
        ).all()
        until = now + timedelta(seconds=self.timeout + CLAIM_MARGIN)
        out = []
        for row in rows:
            took = db.execute(  # compare-and-set: whoever else read the row as free loses it here
                update(OutboxRow)
                .where(OutboxRow.id == row.id, OutboxRow.state == State.PENDING, free)
                .values(claimed_by=self.me, claimed_until=until)
                .execution_options(synchronize_session=False)
            )
            if getattr(took, "rowcount", 0) == 1:
                out.append(Claimed(row.id, row.msg_id, row.stream, row.body, _aware(row.created_at)))
        return out

    def _record(self, db: Db, c: Claimed, outcome: Outcome) -> bool:
        """Write the attempt's outcome; True when this attempt gave the row up (`failed`)."""
        row = db.get(OutboxRow, c.id, with_for_update=True)
        if row is None or row.state != State.PENDING:
            return False  # delivered by another sender meanwhile (at least once), or pruned
        if outcome.error is not None and row.claimed_by != self.me:
            return False  # our claim lapsed and another sender holds the row now: its attempt counts
        now = datetime.now(UTC)
        row.attempts += 1
        row.attempted_at = now
        row.last_status = outcome.status
        row.claimed_by = row.claimed_until = None
        if outcome.error is None:
            row.state, row.delivered_at, row.last_error = State.DELIVERED, now, None
            # The receiver answers again: what failed only because it could not be reached goes now, in order.
            db.execute(
                update(OutboxRow)
                .where(
                    OutboxRow.state == State.PENDING,
                    OutboxRow.attempts > 0,
                    OutboxRow.last_status.is_(None),
                    OutboxRow.next_attempt_at > now,
                )
                .values(next_attempt_at=now)
                .execution_options(synchronize_session=False)
            )
            return False
        row.last_error = outcome.error[:500]
        if (now - c.created_at).total_seconds() >= self.give_up:
            row.state = State.FAILED
            log.warning("webhook given up after %d attempts: %s", row.attempts, row.last_error, extra=_ids(c))
            return True
        delay = min(self.backoff_max, self.backoff * 2 ** min(row.attempts - 1, 30)) * (1 + 0.2 * random.random())
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, self.backoff_max))
        row.next_attempt_at = now + timedelta(seconds=min(delay, self.backoff_max))
        return False

    def _free_previous(self, db: Db) -> None:
        """Claims held by an earlier instance of this node (killed mid-send) are free again at once."""
        db.execute(
            update(OutboxRow)
            .where(
                OutboxRow.claimed_by.like(f"{self.node_id}/%"),
                OutboxRow.claimed_by != self.me,
                OutboxRow.state == State.PENDING,
            )
            .values(claimed_by=None, claimed_until=None)
            .execution_options(synchronize_session=False)
        )

    def _release(self, db: Db) -> None:
        db.execute(
            update(OutboxRow)
            .where(OutboxRow.claimed_by == self.me)
            .values(claimed_by=None, claimed_until=None)
            .execution_options(synchronize_session=False)
        )

    async def _prune(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._pruned + PRUNE_EVERY:
            return
        self._pruned = loop.time()
        cutoff = datetime.now(UTC) - timedelta(seconds=KEEP)
        await self.db.run(
            lambda db: db.execute(
                delete(OutboxRow)
                .where(OutboxRow.state != State.PENDING, OutboxRow.created_at < cutoff)
                .execution_options(synchronize_session=False)
            )
        )


def _ids(c: Claimed) -> dict[str, str]:
    """Log fields: the webhook id and the session (a stream that is not a session is a user's)."""
    return {"webhook_id": c.msg_id, "session_id": c.stream}


def _retry_after(value: str | None) -> float | None:
    """A `Retry-After` header: seconds, or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (_aware(when) - datetime.now(UTC)).total_seconds())


def _plain(exc: httpx.HTTPError) -> str:
    """What went wrong, without library names or the URL."""
    if isinstance(exc, httpx.ConnectError):  # refused, unreachable, unknown name, TLS: the OS's / TLS's own words
        return str(exc)[:200] or "the connection failed"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return "the connection broke before an answer"
    return type(exc).__name__.removesuffix("Error").lower() or "HTTP error"


async def run_sender(settings: Settings, db: Database, metrics: Metrics | None = None) -> None:
    """The controller's webhook task: sends until cancelled; returns at once while HEARTH_WEBHOOK_URL is unset."""
    if settings.webhook_url:
        await Sender(settings, db, metrics=metrics).run()
