"""Master keys: from `HEARTH_MASTER_KEY` (base64 or hex of 32 bytes) or a key file; each has a short key id.

A key ring keeps every key that may still seal records (the current one first) so `hearth vault rotate` can
re-seal records under a new key and only then drop the old one.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

from hearth.config.secrets import MasterKey as MasterKey
from hearth.config.secrets import VaultKeyError as VaultKeyError
from hearth.config.secrets import parse_key as parse_key


class KeyRing:
    """Keys by id; `current` seals new records. Stored as JSON (mode 0600) when file-backed."""

    def __init__(self, keys: list[MasterKey], path: Path | None = None) -> None:
        if not keys:
            raise VaultKeyError("the key ring is empty")
        self._keys = {k.key_id: k for k in keys}
        self.current = keys[0]
        self.path = path

    def get(self, key_id: str) -> MasterKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise VaultKeyError(
                f"no master key with id {key_id}; was the key file replaced instead of rotated?"
            ) from None

    def ids(self) -> list[str]:
        return list(self._keys)

    @classmethod
    def load(cls, env_key: str, path: Path) -> KeyRing:
        """The env key when set (it is then the current key; file keys remain for older records), else the file,
        created with a fresh random key when missing."""
        file_keys: list[MasterKey] = []
        if path.exists():
            data = json.loads(path.read_text())
            file_keys = [MasterKey.of(base64.b64decode(k)) for k in data["keys"]]
        if env_key:
            first = parse_key(env_key)
            return cls([first, *[k for k in file_keys if k.key_id != first.key_id]], None)
        if not file_keys:
            ring = cls([MasterKey.of(secrets.token_bytes(32))], path)
            ring.save()
            return ring
        return cls(file_keys, path)

    def rotated(self) -> KeyRing:
        """A ring with a fresh current key, keeping the old ones until records are re-sealed."""
        return KeyRing([MasterKey.of(secrets.token_bytes(32)), *self._keys.values()], self.path)

    def without(self, key_ids: set[str]) -> KeyRing:
        return KeyRing([k for k in self._keys.values() if k.key_id not in key_ids], self.path)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        ordered = [self.current, *[k for k in self._keys.values() if k.key_id != self.current.key_id]]
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": [base64.b64encode(k.material).decode() for k in ordered]}, f)
        os.replace(tmp, self.path)
