"""Tables: sessions, leases (one per sandbox, uniqueness enforced by the database), the per-session timeline,
sealed credentials, CLI sandboxes, live sandboxes (sealed agent secret, pid + start time), lock rows and the nodes of
a cluster. Sessions, leases, sandboxes and CLI sandboxes belong to one node (`node_id`; `local` for a single-host
`hearth serve`). Every change needs an Alembic migration (hearth/store/migrations)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class OwnerKind(enum.StrEnum):
    """Who holds a lease or a sandbox row (column `owner_kind` of both; the owner id is only an id, never parsed)."""

    SESSION = "session"  # a browser or direct sign-in session: the owner id is the session id
    CLI = "cli"  # a user's CLI sandbox (hearth/clisandbox)
    POOL = "pool"  # a warm-pool sandbox not handed out yet (hearth/session/pool.py)
    RECLAIM = "reclaim"  # a quarantine lease while the reconciler removes an orphan slot's leftovers (leases only)


def owner_kind_type() -> Enum:
    """The column type of `owner_kind`: the enum's values in a VARCHAR(16) with a CHECK constraint (no native
    PostgreSQL type: adding a kind needs no type migration beyond the constraint)."""
    return Enum(
        OwnerKind,
        name="owner_kind",
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda kinds: [k.value for k in kinds],
    )


class SessionRow(Base):
    __tablename__ = "sessions"
    # housekeeping (expiry, watchdog, reconciler) reads one node's active sessions per tick: one indexed statement
    __table_args__ = (Index("ix_sessions_node_status", "node_id", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64), default="local", server_default="local", index=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mode: Mapped[str] = mapped_column(String(16), default="remote_browser", server_default="remote_browser")
    status: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    hop: Mapped[str | None] = mapped_column(String(32), nullable=True)
    driver: Mapped[str] = mapped_column(String(32))
    fabric: Mapped[str] = mapped_column(String(64))
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sandbox_ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # where the person goes back to when the sign-in ends (POST /api/auth/start `return_url`; an allowed origin)
    return_url: Mapped[str | None] = mapped_column(Text, nullable=True)


class LeaseRow(Base):
    """One address per sandbox. `slot` and `ip` are unique per node and fabric (two nodes may use the same address
    space: each fabric is private to its host), `session_id` owns at most one lease."""

    __tablename__ = "leases"
    __table_args__ = (
        UniqueConstraint("node_id", "fabric", "slot", name="uq_lease_slot"),
        UniqueConstraint("node_id", "fabric", "ip", name="uq_lease_ip"),
        UniqueConstraint("session_id", name="uq_lease_owner"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(64), default="local", server_default="local")
    fabric: Mapped[str] = mapped_column(String(64))
    slot: Mapped[int] = mapped_column(Integer)
    ip: Mapped[str] = mapped_column(String(45))
    session_id: Mapped[str] = mapped_column(String(36))
    owner_kind: Mapped[OwnerKind] = mapped_column(
        owner_kind_type(), default=OwnerKind.SESSION, server_default=OwnerKind.SESSION.value
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EventRow(Base):
    """The per-session timeline: every state change and stage, with its time and reason."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(36), ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))  # "state" | "stage" | "note"
    name: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class CredentialRow(Base):
    """One sealed credential bundle per (user, provider). Only metadata is ever returned by the API."""

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("user_id", "provider", name="uq_credential_owner"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    provider: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    files: Mapped[list[str]] = mapped_column(JSON, default=list)  # target paths only, never contents
    session_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # issue 23: each re-seal (a sign-in, a CLI's refresh pushed back) is a new version; a delivery never installs
    # an older one over a newer. status: active | needs_signin (with the CLI's own reason)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CliSandboxRow(Base):
    """The user's persistent CLI sandbox: its home survives stops; it runs only while in use."""

    __tablename__ = "cli_sandboxes"

    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64), default="local", server_default="local")  # where its home lives
    owner_id: Mapped[str] = mapped_column(String(64), unique=True)  # lease owner while running: "cli-<hex>"
    state: Mapped[str] = mapped_column(String(16), default="stopped")  # running | stopped
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sandbox_ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    home: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SandboxRow(Base):
    """One live sandbox of any kind (browser session or CLI sandbox), written by the sandbox manager: what the next
    controller needs to adopt it after a restart — its slot, its launcher's PID and start time, and its agent secret
    sealed with the vault's key ring (bound to the owner id). Deleted when the sandbox is destroyed."""

    __tablename__ = "sandboxes"

    owner_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # session id, CLI or pool owner id
    node_id: Mapped[str] = mapped_column(String(64), default="local", server_default="local")
    kind: Mapped[str] = mapped_column(String(16))  # session | cli: what the sandbox is (desktop, or a home)
    owner_kind: Mapped[OwnerKind] = mapped_column(  # who holds it: a session, a CLI sandbox, the warm pool
        owner_kind_type(), default=OwnerKind.SESSION, server_default=OwnerKind.SESSION.value
    )
    state: Mapped[str] = mapped_column(String(16))  # booting | running | pooled | kept
    fabric: Mapped[str] = mapped_column(String(64))
    slot: Mapped[int] = mapped_column(Integer)
    driver: Mapped[str] = mapped_column(String(32))
    desktop: Mapped[bool] = mapped_column(Boolean, default=True)
    home: Mapped[str | None] = mapped_column(Text, nullable=True)  # persistent home (CLI sandboxes)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid_start: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # /proc/<pid>/stat field 22 (ticks)
    key_id: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LockRow(Base):
    """Named lock rows. Admission (limits + lease + insert) updates the `admission` row first, in the same
    transaction: a row lock on PostgreSQL, the write lock on SQLite — so concurrent creates are serialized."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)


class NodeRow(Base):
    """One `hearth node` (one host): where edges reach it, what it can hold, and whether it is alive. Written by the
    node itself (register + heartbeat); `state` also by `hearth node drain` and by whoever notices a missed heartbeat."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(255))  # http://host:port of its API + gateway, as edges reach it
    state: Mapped[str] = mapped_column(String(16), default="up")  # up | draining | down
    capacity: Mapped[int] = mapped_column(Integer, default=0)
    free_slots: Mapped[int] = mapped_column(Integer, default=0)
    drivers: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxRow(Base):
    """One webhook to send (hearth/webhooks): written in the same transaction as the state change it reports, sent
    at least once, in order per `stream` (a session: its states and the credentials it sealed), retried with back-off.
    A sender claims a row (`claimed_by` until `claimed_until`), so several nodes share the outbox without sending a
    row twice at once."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (
        Index("ix_webhook_outbox_due", "state", "next_attempt_at"),
        Index("ix_webhook_outbox_stream", "stream", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # the order within a stream
    msg_id: Mapped[str] = mapped_column(String(40), unique=True)  # webhook-id: the same on every retry
    stream: Mapped[str] = mapped_column(String(240))
    type: Mapped[str] = mapped_column(String(64))  # e.g. session.ready, credential.sealed
    body: Mapped[str] = mapped_column(Text)  # the JSON sent, byte for byte (the signature covers it)
    node_id: Mapped[str] = mapped_column(String(64))  # the node whose state change it reports
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the receiver's HTTP status
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EgressPortRow(Base):
    """A user's port on the upstream egress proxy (HEARTH_EGRESS_PROXY), assigned once and kept for life by
    hearth/proxy/ports.py — the only writer. Unique per port: concurrent first requests on any node never collide."""

    __tablename__ = "egress_ports"
    __table_args__ = (UniqueConstraint("port", name="uq_egress_ports_port"),)

    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    port: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(String(64))  # the node that assigned it (for the record)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PromptRow(Base):
    """One prompt run through a user's own CLI (hearth/prompts). The prompt and the final answer are sealed with the
    vault's key ring (bound to the user and the prompt id); only metadata is plain."""

    __tablename__ = "prompts"
    __table_args__ = (Index("ix_prompts_user_status", "user_id", "status"), Index("ix_prompts_status", "status"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[str] = mapped_column(String(64), default="local", server_default="local")
    status: Mapped[str] = mapped_column(String(16))
    permissions: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)  # asked for, then the one the CLI used
    conversation_id: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the CLI's own session id
    resumed_from: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the conversation it continues
    timeout: Mapped[float] = mapped_column(Float)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    step: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the failing step
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)  # the newest stored event's sequence number
    answer_bytes: Mapped[int] = mapped_column(Integer, default=0)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the sealed prompt and answer
    prompt_nonce: Mapped[bytes | None] = mapped_column(LargeBinary(12), nullable=True)
    prompt_ct: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    answer_nonce: Mapped[bytes | None] = mapped_column(LargeBinary(12), nullable=True)
    answer_ct: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PromptChunkRow(Base):
    """A batch of a prompt's stream events (or raw CLI lines), sealed: what a reconnecting stream replays."""

    __tablename__ = "prompt_chunks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prompt_id: Mapped[str] = mapped_column(String(36), ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # events | raw
    first_seq: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
