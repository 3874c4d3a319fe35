"""Vault: AES-256-GCM sealing bound to its owner, key ids, crash-safe rotation; contents never in reprs."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from hearth.store.db import Database
from hearth.store.models import CredentialRow
from hearth.vault.keys import KeyRing, MasterKey, VaultKeyError, parse_key
from hearth.vault.seal import SealError, seal, unseal
from hearth.vault.store import CredentialFile, Vault

SECRET = b'{"access_token": "sk-test-very-secret-value"}'


def ring(tmp_path: Path) -> KeyRing:
    return KeyRing.load("", tmp_path / "vault.keys")


def test_seal_roundtrip_and_binding(tmp_path: Path) -> None:
    r = ring(tmp_path)
    sealed = seal(r, SECRET, "alice", "codex")
    assert SECRET not in sealed.ciphertext
    assert unseal(r, sealed, "alice", "codex") == SECRET
    with pytest.raises(SealError):
        unseal(r, sealed, "bob", "codex")  # copied onto another user's row: does not open


def test_key_file_created_private_and_stable(tmp_path: Path) -> None:
    a = ring(tmp_path)
    assert (tmp_path / "vault.keys").stat().st_mode & 0o777 == 0o600
    b = ring(tmp_path)
    assert a.current.key_id == b.current.key_id


def test_env_key_parsing() -> None:
    raw = secrets.token_bytes(32)
    assert parse_key(raw.hex()).material == raw
    assert parse_key(base64.b64encode(raw).decode()).material == raw
    with pytest.raises(VaultKeyError, match="32 bytes"):
        parse_key("too-short")


async def test_store_metadata_only_and_revoke(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    vault = Vault(db, ring(tmp_path))
    files = [CredentialFile(".codex/auth.json", 0o600, SECRET)]
    meta = await vault.put("alice", "codex", files, "s1")
    assert meta.files == [".codex/auth.json"]
    assert "secret" not in repr(meta) and "secret" not in repr(files)
    raw = db.call(lambda d: d.query(CredentialRow).one().ciphertext)
    assert SECRET not in raw
    assert await vault.open("alice", "codex") == files
    assert [m.provider for m in await vault.list("alice")] == ["codex"]
    assert await vault.list("bob") == []
    assert await vault.revoke("alice", "codex") is True
    assert await vault.open("alice", "codex") is None
    assert await vault.revoke("alice", "codex") is False


async def test_rotate_reseals_under_new_key(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    vault = Vault(db, ring(tmp_path))
    old_id = vault.ring.current.key_id
    for user in ("alice", "bob"):
        await vault.put(user, "claude_code", [CredentialFile(".claude/.credentials.json", 0o600, SECRET)], None)
    new_ring, count = vault.rotate_sync()
    assert count == 2 and new_ring.current.key_id != old_id
    assert new_ring.ids() == [new_ring.current.key_id]
    assert {r.key_id for r in db.call(lambda d: d.query(CredentialRow).all())} == {new_ring.current.key_id}
    reloaded = Vault(db, ring(tmp_path))  # the key file on disk has the new key only
    assert (await reloaded.open("bob", "claude_code"))[0].data == SECRET  # type: ignore[index]


def test_rotate_with_env_key_requires_new_key(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    env_ring = KeyRing.load(secrets.token_bytes(32).hex(), tmp_path / "unused.keys")
    with pytest.raises(VaultKeyError, match="--new-key"):
        Vault(db, env_ring).rotate_sync()
    new_ring, _ = Vault(db, env_ring).rotate_sync(MasterKey.of(secrets.token_bytes(32)))
    assert len(new_ring.ids()) == 1


async def test_replacement_is_committed_only_with_its_transaction(tmp_path: Path) -> None:
    """`upsert` seals first and stores inside the caller's transaction: when that transaction fails (the session
    did not accept the push), the user's previous good record is untouched."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    vault = Vault(db, ring(tmp_path))
    good = [CredentialFile(".codex/auth.json", 0o600, SECRET)]
    await vault.put("alice", "codex", good, "s1")
    store = vault.upsert("alice", "codex", [CredentialFile(".codex/auth.json", 0o600, b"bad")], "s2")

    def refused(d: object) -> None:
        store(d)  # type: ignore[arg-type]
        raise RuntimeError("the session ended meanwhile")

    with pytest.raises(RuntimeError):
        db.call(refused)
    assert await vault.open("alice", "codex") == good
    db.call(store)
    assert await vault.open("alice", "codex") == [CredentialFile(".codex/auth.json", 0o600, b"bad")]
