"""What one diagnosis found: one result per check, in path order, and the first failure (the root cause).

Pure data and rendering: no I/O here. A check is `ok` (True), failed (False) or not run (None: skipped because a
check it needs failed, or because it does not apply — e.g. the gateway check inside the gateway's own verdict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.errors import HearthError, Hop


@dataclass(frozen=True)
class Finding:
    """What a check function observed: the verdict, the evidence and (when failed) the concrete fix."""

    ok: bool
    evidence: str
    hint: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    hop: Hop | None = None  # overrides the step's hop (e.g. a lease check that finds a config problem)

    @classmethod
    def good(cls, evidence: str, data: dict[str, Any] | None = None) -> Finding:
        return cls(True, evidence, "", dict(data or {}))

    @classmethod
    def bad(cls, evidence: str, hint: str, hop: Hop | None = None, data: dict[str, Any] | None = None) -> Finding:
        return cls(False, evidence, hint, dict(data or {}), hop)


@dataclass(frozen=True)
class CheckResult:
    hop: Hop
    name: str
    ok: bool | None  # None: not run (see `evidence` for why)
    evidence: str
    hint: str = ""
    duration_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.ok is False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hop": self.hop.value,
            "name": self.name,
            "ok": self.ok,
            "evidence": self.evidence,
            "hint": self.hint,
            "duration_s": round(self.duration_s, 4),
        }
        if self.data:
            out["data"] = self.data
        return out

    def error(self) -> HearthError:
        """This failure as hearth's error (a session failure reason / gateway close reason, which WebSocket limits
        to 123 bytes): the evidence's headline, then the fix; the full evidence is in the report."""
        return HearthError(self.hop, f"{self.name}: {headline(self.evidence)}", self.hint)


def headline(evidence: str, limit: int = 80) -> str:
    """The evidence without its parenthesised details (and, if still long, without its later clauses)."""
    head = evidence.split(" (", 1)[0] if evidence.find(" (") > 10 else evidence
    if len(head) > limit and head.find("; ") > 10:
        head = head.split("; ", 1)[0]
    return head


@dataclass(frozen=True)
class Report:
    checks: list[CheckResult]
    duration_s: float
    session_id: str | None = None
    session: dict[str, Any] | None = None  # status, slot, sandbox_ip, driver of the diagnosed session

    @property
    def first_failure(self) -> CheckResult | None:
        return next((c for c in self.checks if c.failed), None)

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def check(self, name: str) -> CheckResult:
        """The result of the check called `name` (KeyError when there is none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def error(self) -> HearthError | None:
        first = self.first_failure
        return first.error() if first is not None else None

    def as_dict(self) -> dict[str, Any]:
        first = self.first_failure
        out: dict[str, Any] = {}
        if self.session_id is not None:
            out["session_id"] = self.session_id
        if self.session is not None:
            out["session"] = self.session
        out.update(
            {
                "ok": self.ok,
                "checks": [c.as_dict() for c in self.checks],
                "first_failure": first.as_dict() if first is not None else None,
                "duration_s": round(self.duration_s, 4),
            }
        )
        return out


_MARK = {True: "[green]ok[/]", False: "[bold red]FAIL[/]", None: "[dim]skip[/]"}


def render(report: Report, console: Console) -> None:
    """A Rich table of every check in path order; the first failure highlighted and repeated with its fix."""
    title = f"hearth doctor — session {report.session_id}" if report.session_id else "hearth doctor — host"
    table = Table(title=title, show_lines=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("hop")
    table.add_column("check")
    table.add_column("result")
    table.add_column("evidence", overflow="fold")
    table.add_column("fix", overflow="fold")
    first = report.first_failure
    for i, c in enumerate(report.checks, 1):
        style = "on dark_red" if c is first else ("dim" if c.ok is None else None)
        table.add_row(str(i), c.hop.value, escape(c.name), _MARK[c.ok], escape(c.evidence), escape(c.hint), style=style)
    console.print(table)
    if report.session is not None:
        s = report.session
        console.print(
            f"session: status {escape(str(s.get('status')))}, driver {escape(str(s.get('driver')))}, "
            f"slot {s.get('slot')}, address {escape(str(s.get('sandbox_ip')))}"
        )
    if first is None:
        console.print(f"[bold green]all checks passed[/] in {report.duration_s:.3f}s")
    else:
        console.print(
            f"[bold red]first failure:[/] {escape(f'[{first.hop.value}]')} {escape(first.name)}: {escape(first.evidence)}\n"
            f"[bold]fix:[/] {escape(first.hint or 'see the evidence above')}\n"
            f"diagnosed in {report.duration_s:.3f}s"
        )
