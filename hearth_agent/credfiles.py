"""Watching for the credential files a CLI writes during its sign-in (in HOME, through homefs: no symlinks).

Complete when every declared file is present, non-empty, new (not the content it had when the sign-in started),
valid JSON where required, and unchanged since the previous look — for at least `min_stable` seconds while the CLI
still runs: a CLI may write its file twice (Claude Code writes the tokens, fetches the account's profile, then
rewrites the file with what it learnt), and on a busy host the second write comes long after one poll.
"""

from __future__ import annotations

import json

from hearth_agent import homefs
from hearth_agent.providerdef import FileDef
from hearth_agent.sha import sha256


def _digest(data: bytes | None) -> bytes | None:
    return None if data is None else sha256(data)


class CredentialFiles:
    def __init__(self, home: str, files: list[FileDef]) -> None:
        self.home, self.files = home, files
        self.problem = ""  # why the files are not complete yet (for failure reasons)
        self._snapshot: list[bytes | None] | None = None
        self._since = 0.0  # when the snapshot's contents were first seen
        self._refused: dict[str, str] = {}
        self._initial = {f.source: _digest(self.read(f.source)) for f in files}  # only new content counts

    def read(self, path: str, limit: int = homefs.MAX_FILE, note: bool = True) -> bytes | None:
        try:
            return homefs.read_file(self.home, path, limit)
        except homefs.PathRefused as exc:
            if note:
                self.problem = self._refused[path] = str(exc)
            return None

    @property
    def settling(self) -> bool:
        """The files looked complete at the last check: the next one (a poll later) tells whether they are stable."""
        return self._snapshot is not None

    def check(self, now: float = 0.0, min_stable: float = 0.0) -> list[tuple[FileDef, bytes]] | None:
        """The files with their contents when complete, else None (`problem` says why): unchanged since the last
        check, and for `min_stable` seconds (by `now`, a monotonic clock)."""
        self._refused = {}
        contents = [self.read(f.source) for f in self.files]
        for f, data in zip(self.files, contents, strict=True):
            problem = ""
            if f.source in self._refused:
                self.problem, self._snapshot = self._refused[f.source], None
                return None
            if data is None:
                problem = "missing"
            elif not data.strip():
                problem = "empty"
            elif _digest(data) == self._initial[f.source]:
                problem = "not rewritten"
            elif f.require_json:
                try:
                    json.loads(data)
                except ValueError:
                    problem = "not JSON yet"
            if problem:
                self.problem, self._snapshot = f"{f.source}: {problem}", None
                return None
        previous, self._snapshot = self._snapshot, contents
        if previous != contents:
            self._since = now
            return None  # stable for one poll first
        if now - self._since < min_stable:
            self.problem = "still being written"
            return None
        return [(f, d) for f, d in zip(self.files, contents, strict=True) if d is not None]
